"""A coordinator's side of stage leadership on etcd: the routing table and the desired model
version, fed by one watch of the cluster's prefix."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from state.etcd_client import (
    BACKOFF_MAX_S,
    QUEUE_POLL_S,
    Backoff,
    EtcdConnection,
    EtcdUnavailable,
    KeyChange,
    Outage,
    RevisionCompacted,
    WatchBroken,
    WatchItem,
)
from state.etcd_keys import (
    cluster_prefix,
    desired_version_key,
    parse_desired_version,
    stage_views,
    stages_prefix,
)
from state.leadership import LeadershipUnavailable, StageView
from state.store_metrics import ETCD_CONNECTED, ETCD_WATCH_RESTARTS

_log = logging.getLogger(__name__)


class EtcdRoutingTable:
    """Implements RoutingTable: one listing, then a watch from the next revision.

    When the watch breaks, the table keeps its last state (connected=False), retries with
    backoff and jitter, and resumes from the last revision seen, so that no change is missed;
    if that revision was compacted meanwhile, it lists again.
    """

    def __init__(
        self,
        url: str,
        cluster: str,
        *,
        request_timeout_s: float = 2.0,
        start_timeout_s: float = 10.0,
        max_backoff_s: float = BACKOFF_MAX_S,
    ) -> None:
        self._url = url
        self._prefix = cluster_prefix(cluster)
        self._stages_prefix = stages_prefix(cluster)
        self._desired_key = desired_version_key(cluster)
        self._desired: str | None = None
        self._desired_revision = 0
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = 2 * request_timeout_s + 1.0
        self._etcd = EtcdConnection(url, request_timeout_s)
        self._backoff = Backoff(max_s=max_backoff_s)
        self._lock = threading.Lock()
        self._table: dict[int, StageView] = {}
        self._subscribers: list[Callable[[dict[int, StageView]], None]] = []
        self._entries: dict[str, bytes] = {}
        self._revision = 0
        self._connected = False
        self._watch_gen = 0
        self._watches = 0
        self._items: queue.Queue[tuple[int, WatchItem]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("routing table already started")
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            try:
                self._list()
                break
            except EtcdUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise LeadershipUnavailable(
                        f"etcd {self._url} did not answer within start_timeout_s="
                        f"{self._start_timeout_s}: {exc}"
                    ) from exc
                time.sleep(min(self._backoff.next_s(), max(0.0, deadline - time.monotonic())))
        self._backoff.reset()
        self._thread = threading.Thread(target=self._run, name="routing-table", daemon=True)
        self._thread.start()

    def snapshot(self) -> dict[int, StageView]:
        with self._lock:
            return dict(self._table)

    def desired_version(self) -> str | None:
        with self._lock:
            return self._desired

    def desired_revision(self) -> int:
        """The table's revision when the desired version took its current value: at least
        the revision of that put, and below that of any later one."""
        with self._lock:
            return self._desired_revision

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def revision(self) -> int:
        """The etcd revision the table reflects (at least)."""
        return self._revision

    def subscribe(self, callback: Callable[[dict[int, StageView]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def stop(self) -> None:
        self._stopping.set()
        self._items.put((0, []))  # wake the watch thread now rather than at its next poll
        if self._thread is not None:
            self._thread.join(self._stop_timeout_s)
        self._watch_gen += 1
        self._set_connected(False)
        self._etcd.close()

    def _run(self) -> None:
        relist = False
        outage = Outage("routing table")
        while not self._stopping.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                self._watch()
                self._backoff.reset()
                outage.ended()
                relist = self._follow()
            except RevisionCompacted:
                relist = True
            except EtcdUnavailable as exc:
                self._set_connected(False)
                wait_s = self._backoff.next_s()
                outage.failed(exc, wait_s)
                self._stopping.wait(wait_s)
            except Exception:  # a bug must not end the thread: the table would quietly go stale
                _log.exception("routing table watch failed")
                self._set_connected(False)
                relist = True
                self._stopping.wait(self._backoff.next_s())

    def _list(self) -> None:
        revision, entries = self._etcd.list_prefix(self._prefix)
        self._entries, self._revision = entries, revision
        self._publish()
        self._set_connected(True)
        _log.info("routing table listed %d keys at revision=%d", len(entries), revision)

    def _watch(self) -> None:
        self._watch_gen += 1
        gen = self._watch_gen

        def on_item(item: WatchItem) -> None:
            if gen == self._watch_gen:
                self._items.put((gen, item))

        self._etcd.watch(self._prefix, on_item, prefix=True, start_revision=self._revision + 1)
        self._watches += 1
        if self._watches > 1:
            ETCD_WATCH_RESTARTS.inc()
        self._set_connected(True)

    def _follow(self) -> bool:
        """Apply watch items until the watch breaks (raise) or was compacted (True) or stop."""
        while not self._stopping.is_set():
            try:
                gen, item = self._items.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            if gen != self._watch_gen or self._stopping.is_set():
                continue
            if isinstance(item, WatchBroken):
                if item.compacted:
                    return True
                raise EtcdUnavailable(item.reason)
            self._apply(item)
        return False

    def _apply(self, changes: list[KeyChange]) -> None:
        for change in changes:
            if change.value is None:
                self._entries.pop(change.key, None)
            else:
                self._entries[change.key] = change.value
            self._revision = max(self._revision, change.revision)
        self._publish()

    def _publish(self) -> None:
        table = stage_views(self._stages_prefix, self._entries)
        desired = parse_desired_version(self._entries.get(self._desired_key))
        with self._lock:
            if table == self._table and desired == self._desired:
                return
            if desired != self._desired:
                _log.info("desired model version is now %s (revision=%d)", desired, self._revision)
                self._desired_revision = self._revision
            self._table, self._desired = table, desired
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(dict(table))
            except Exception:
                _log.exception("routing table subscriber %r failed", callback)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self._connected:
            _log.info("routing table connected to etcd again at revision=%d", self._revision)
        elif self._connected and not connected and not self._stopping.is_set():
            _log.warning(
                "routing table lost etcd at revision=%d: routing on the last known table",
                self._revision,
            )
        self._connected = connected
        ETCD_CONNECTED.labels("routing_table").set(int(connected))
