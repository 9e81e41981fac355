"""A session store in this process's memory, with the Redis store's semantics (conditional
commit on seq, anchor kept while stages lag, trimmed observation log, TTL).

For in-process tests of the coordinator's step and for single-process experiments: nothing
survives the process, and there are no replicas (a session that asks for replica
acknowledgement is never acknowledged). tests/integration/test_store_contract.py runs the
same contract against this store and a real Redis.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from state.session import (
    CommitOutcome,
    CommitStatus,
    SessionId,
    SessionRecord,
    StepCommit,
    committed,
)
from state.store import NotReplicated


@dataclass
class _Stored:
    record: SessionRecord
    expires: float  # time.monotonic()
    log: deque[tuple[int, bytes]] = field(default_factory=deque)


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[SessionId, _Stored] = {}
        self._lock = threading.Lock()

    def create(self, record: SessionRecord) -> None:
        _check_ttl(record.ttl_s)
        with self._lock:
            if self._live(record.session_id) is not None:
                raise ValueError(f"session={record.session_id} already exists")
            self._sessions[record.session_id] = _Stored(record, time.monotonic() + record.ttl_s)

    def load(self, session_id: SessionId) -> SessionRecord | None:
        with self._lock:
            stored = self._live(session_id)
            return stored.record if stored is not None else None

    def commit(self, session_id: SessionId, step: StepCommit) -> CommitOutcome:
        if step.new_seq <= step.expected_seq:
            raise ValueError(
                f"session={session_id} new_seq {step.new_seq} <= expected {step.expected_seq}"
            )
        _check_ttl(step.ttl_s)
        with self._lock:
            stored = self._live(session_id)
            if stored is None:
                return CommitOutcome(CommitStatus.GONE, None)
            if stored.record.seq != step.expected_seq:
                return CommitOutcome(CommitStatus.CONFLICT, stored.record.seq)
            stored.record = committed(stored.record, step)
            stored.expires = time.monotonic() + step.ttl_s
            if step.log_limit > 0 and step.observation:
                stored.log.append((step.new_seq, step.observation))
                while len(stored.log) > step.log_limit:
                    stored.log.popleft()
        if step.wait_replicas > 0:
            raise NotReplicated(
                f"session={session_id} seq={step.new_seq} is committed in memory, which has no "
                f"replicas ({step.wait_replicas} asked)"
            )
        return CommitOutcome(CommitStatus.COMMITTED, step.new_seq)

    def confirm_replicated(self, session_id: SessionId, replicas: int, timeout_s: float) -> None:
        if replicas > 0:
            raise NotReplicated(f"session={session_id}: a memory store has no replicas")

    def observations(
        self, session_id: SessionId, first_seq: int, last_seq: int
    ) -> list[bytes] | None:
        with self._lock:
            stored = self._live(session_id)
            by_seq = dict(stored.log) if stored is not None else {}
        wanted = range(first_seq, last_seq + 1)
        if any(seq not in by_seq for seq in wanted):
            return None
        return [by_seq[seq] for seq in wanted]

    def log_depth(self, session_id: SessionId) -> int:
        with self._lock:
            stored = self._live(session_id)
            return len(stored.log) if stored is not None else 0

    def ttl_left_s(self, session_id: SessionId) -> float | None:
        with self._lock:
            stored = self._live(session_id)
            return stored.expires - time.monotonic() if stored is not None else None

    def delete(self, session_id: SessionId) -> bool:
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def replicas(self) -> int:
        return 0

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release."""

    def _live(self, session_id: SessionId) -> _Stored | None:
        """The session unless it expired (then it is dropped, as Redis drops the key)."""
        stored = self._sessions.get(session_id)
        if stored is not None and stored.expires <= time.monotonic():
            del self._sessions[session_id]
            return None
        return stored


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
