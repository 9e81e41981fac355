"""The records this coordinator committed last, so that a session's next step here costs one
store round trip (the commit) instead of two.

Safe because every commit is conditional on the session's seq: an entry left behind when
another coordinator moved the session on makes the commit conflict, and the step then reloads
from the store. An entry is taken (removed) by the step that uses it and put back only with a
commit the store confirmed, so a step that fails in any way leaves nothing stale behind.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from state.session import SessionId, SessionRecord


class SessionCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[SessionId, tuple[SessionRecord, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(
        self,
        session_id: SessionId,
        seq: int,
        vet: Callable[[SessionRecord], None] = lambda _: None,
    ) -> SessionRecord | None:
        """The cached record when `seq` is its next step (and it cannot have expired since);
        the entry is removed either way, unless `vet` raises: then it is left in place and
        the error propagates, so that a caller refused the session (not its owner) cannot
        evict the owner's entry and make its next step reload from the store."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            vet(entry[0])
            del self._entries[session_id]
        record, expires = entry
        if seq != record.seq + 1 or time.monotonic() >= expires:
            return None
        return record

    def put(self, record: SessionRecord) -> None:
        """`record` as the store holds it after a confirmed commit."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._entries[record.session_id] = (record, time.monotonic() + record.ttl_s)
            self._entries.move_to_end(record.session_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, session_id: SessionId) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._entries)
