"""Stage leadership on etcd: replicas hold a lease and campaign for a key; coordinators watch.

Keys, under `/actionmesh/<cluster>/stages/<k>/`:
- `leader`: the leader's ReplicaInfo JSON, bound to its lease (created only if absent);
- `replicas/<replica_id>`: every live replica, leader too, bound to the same lease.

The lease id is the epoch: a replica that loses its lease comes back with a new one. The only
file that imports pyetcd; `_Etcd` wraps it with types, failover and error translation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pyetcd
import pyetcd.events
import pyetcd.exceptions

from state.leadership import LeadershipUnavailable, ReplicaInfo, Role, StageView
from state.metrics import ETCD_CONNECTED, ETCD_WATCH_RESTARTS, LEADERSHIP_CHANGES

_log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
# pyetcd marks a failed endpoint unusable for time_retry seconds (default 300): a restarted
# etcd would be refused for five minutes.
ENDPOINT_RETRY_S = 1.0
MIN_REQUEST_TIMEOUT_S = 0.5
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 1.0
QUEUE_POLL_S = 0.2
_CHANNEL_OPTIONS = [
    # Reconnect to a restarted member within a second, not gRPC's default of up to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A watch on a silently dead connection must fail, not wait forever (etcd allows >= 5 s).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def parse_etcd_url(url: str) -> list[tuple[str, int]]:
    """`etcd://h1:p1,h2:p2` → [(h1, p1), (h2, p2)]; a missing port is 2379."""
    scheme, sep, rest = url.partition("://")
    hosts, _, path = rest.partition("/")
    if scheme != "etcd" or not sep or path or not hosts:
        raise ValueError(f"bad etcd URL {url!r}: use etcd://host:port[,host:port...]")
    endpoints = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), url)
        endpoints.append((host, port))
    return endpoints


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:2379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad endpoint {item!r} in etcd URL {url!r}")
    return host, int(port) if port else DEFAULT_PORT


def stages_prefix(cluster: str) -> str:
    return f"/actionmesh/{cluster}/stages/"


def leader_key(cluster: str, stage: int) -> str:
    return f"{stages_prefix(cluster)}{stage}/leader"


def replica_key(cluster: str, stage: int, replica_id: str) -> str:
    return f"{stages_prefix(cluster)}{stage}/replicas/{replica_id}"


def stage_views(prefix: str, entries: Mapping[str, bytes]) -> dict[int, StageView]:
    """The routing table from the raw keys under `prefix`; unreadable entries are skipped."""
    leaders: dict[int, ReplicaInfo] = {}
    replicas: dict[int, dict[str, ReplicaInfo]] = {}
    for key, value in sorted(entries.items()):
        parts = key.removeprefix(prefix).split("/")
        try:
            info = ReplicaInfo.from_json(value)
        except (ValueError, TypeError) as exc:
            _log.warning("etcd key=%s unreadable, ignored: %s", key, exc)
            continue
        if len(parts) == 2 and parts[1] == "leader" and parts[0].isdigit():
            leaders[int(parts[0])] = info
        elif len(parts) == 3 and parts[1] == "replicas" and parts[0].isdigit():
            replicas.setdefault(int(parts[0]), {})[parts[2]] = info
    views = {}
    for stage in sorted(leaders.keys() | replicas.keys()):
        members = replicas.get(stage, {})
        leader = leaders.get(stage)
        if leader is not None:  # registered an instant later, or its replicas key was lost
            members = {leader.replica_id: leader, **members}
        views[stage] = StageView(stage, leader, members)
    return views


class EtcdUnavailable(Exception):
    """etcd did not answer (all endpoints failed, timed out, or lost quorum); retry later."""


class _LeaseNotFound(Exception):
    """The lease expired or was revoked: its keys are gone."""


class _Compacted(Exception):
    """The revision to watch from was compacted: list again."""


@dataclass(frozen=True)
class _Kv:
    value: bytes
    lease_id: int


@dataclass(frozen=True)
class _Change:
    key: str
    value: bytes | None  # None: deleted
    revision: int


@dataclass(frozen=True)
class _WatchBroken:
    reason: str
    compacted: bool = False


WatchItem = list[_Change] | _WatchBroken


class _Etcd:
    """pyetcd's multi-endpoint client, typed, failing over, every error one of ours."""

    def __init__(self, url: str, request_timeout_s: float) -> None:
        endpoints = [
            pyetcd.Endpoint(
                host, port, secure=False, time_retry=ENDPOINT_RETRY_S, opts=_CHANNEL_OPTIONS
            )
            for host, port in parse_etcd_url(url)
        ]
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=request_timeout_s, failover=True
        )

    def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in s, which etcd may raise to its minimum)."""
        with _translated("grant lease"):
            lease = self._client.lease(ttl_s)
            return int(lease.id), int(lease.ttl)

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; its TTL in s, 0 when it no longer exists."""
        with _translated("keep lease alive"):
            replies = list(self._client.refresh_lease(lease_id))
        if not replies:
            raise EtcdUnavailable("keepalive stream closed without a reply")
        return int(replies[0].TTL)

    def revoke(self, lease_id: int) -> None:
        try:
            with _translated("revoke lease"):
                self._client.revoke_lease(lease_id)
        except _LeaseNotFound:
            pass

    def put(self, key: str, value: bytes, lease_id: int) -> None:
        with _translated(f"put {key}"):
            self._client.put(key, value, lease=lease_id)

    def get(self, key: str) -> _Kv | None:
        with _translated(f"get {key}"):
            value, meta = self._client.get(key)
        return None if meta is None else _Kv(bytes(value), int(meta.lease_id))

    def create(self, key: str, value: bytes, lease_id: int) -> tuple[bool, _Kv | None]:
        """Put key only if it does not exist; (created, what the key holds now)."""
        tx = self._client.transactions
        with _translated(f"create {key}"):
            created, replies = self._client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, value, lease=lease_id)],
                failure=[tx.get(key)],
            )
        if created:
            return True, _Kv(value, lease_id)
        found = [_Kv(bytes(v), int(meta.lease_id)) for v, meta in replies[0]]
        return False, found[0] if found else None

    def list_prefix(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        """Every key under prefix and the store revision they were read at."""
        with _translated(f"list {prefix}"):
            reply = self._client.get_prefix_response(prefix)
        return int(reply.header.revision), {kv.key.decode(): bytes(kv.value) for kv in reply.kvs}

    def watch(
        self,
        key: str,
        on_item: Callable[[WatchItem], None],
        *,
        prefix: bool = False,
        start_revision: int | None = None,
    ) -> int:
        """Start a watch; on_item runs on pyetcd's watch thread with changes or the failure."""

        def deliver(response: object) -> None:
            on_item(_watch_item(response))

        add = self._client.add_watch_prefix_callback if prefix else self._client.add_watch_callback
        with _translated(f"watch {key}"):
            return int(add(key, deliver, start_revision=start_revision))

    def close(self) -> None:
        self._client.close()


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn pyetcd's and gRPC's errors into EtcdUnavailable / _LeaseNotFound / _Compacted."""
    try:
        yield
    except pyetcd.exceptions.RevisionCompactedError as exc:
        raise _Compacted(f"{what}: revision {exc.compacted_revision} compacted") from exc
    except grpc.RpcError as exc:  # pyetcd re-raises codes it has no exception for as they are
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else repr(exc)
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in (detail or ""):
            raise _LeaseNotFound(f"{what}: {detail}") from exc
        raise EtcdUnavailable(f"{what}: {code} {detail}") from exc
    except pyetcd.Etcd3Exception as exc:  # connection failed, timed out, no endpoint left
        raise EtcdUnavailable(f"{what}: {type(exc).__name__} {exc}") from exc


def _watch_item(response: object) -> WatchItem:
    if isinstance(response, pyetcd.exceptions.RevisionCompactedError):
        return _WatchBroken(f"revision {response.compacted_revision} compacted", compacted=True)
    if response is None or isinstance(response, BaseException):
        detail = response.details() if isinstance(response, grpc.Call) else repr(response)
        return _WatchBroken(f"watch stream ended: {detail}")
    return [
        _Change(
            event.key.decode(),
            None if isinstance(event, pyetcd.events.DeleteEvent) else bytes(event.value),
            int(event.mod_revision),
        )
        for event in getattr(response, "events", [])
    ]


class _Backoff:
    """Doubling delays with jitter, capped; reset after a success."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self._initial_s, self._max_s, self._failures = initial_s, max_s, 0

    def next_s(self) -> float:
        cap = min(self._max_s, self._initial_s * 2**self._failures)
        self._failures += 1
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._failures = 0


class _Outage:
    """Logs the first failure of an outage as a warning, the retries at debug, the recovery."""

    def __init__(self, who: str) -> None:
        self._who, self._failures, self._since = who, 0, 0.0

    def failed(self, exc: Exception, retry_in_s: float) -> None:
        if not self._failures:
            self._since = time.monotonic()
            _log.warning("%s etcd unavailable, retrying: %s", self._who, exc)
        else:
            _log.debug("%s etcd unavailable, retry in %.2fs: %s", self._who, retry_in_s, exc)
        self._failures += 1

    def ended(self) -> None:
        if self._failures:
            _log.info(
                "%s etcd reachable again after %.1fs and %d failed attempts",
                self._who,
                time.monotonic() - self._since,
                self._failures,
            )
            self._failures = 0


class EtcdReplicaMembership:
    """Implements ReplicaMembership: register, campaign, keep the lease alive, until stop().

    All etcd calls run on one background thread. A leader that cannot renew its lease steps
    down when the lease may have expired (last successful keepalive sent + TTL, on the local
    monotonic clock), before anyone else can have taken over. lease_ttl_s is rounded up to
    whole seconds, at least 1; etcd may grant more (its floor is 1.5 election timeouts).
    """

    def __init__(
        self,
        url: str,
        cluster: str,
        info: ReplicaInfo,
        lease_ttl_s: float = 2.0,
        *,
        on_role_change: Callable[[Role], None] | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        if "/" in info.replica_id or "/" in cluster or not info.replica_id:
            raise ValueError(f"replica_id {info.replica_id!r} and cluster {cluster!r}: no '/'")
        self._info = info
        self._ttl_s = max(1, math.ceil(lease_ttl_s))
        timeout_s = request_timeout_s or max(MIN_REQUEST_TIMEOUT_S, self._ttl_s / 3)
        self._stop_timeout_s = 3 * timeout_s + 1.0
        self._etcd = _Etcd(url, timeout_s)
        self._leader_key = leader_key(cluster, info.stage)
        self._replica_key = replica_key(cluster, info.stage, info.replica_id)
        self._on_role_change = on_role_change
        self._lock = threading.Lock()
        self._role = Role.STARTING
        self._lease_id = 0
        self._granted_ttl_s = self._ttl_s
        self._lease_deadline = 0.0  # monotonic: our lease may have expired from then on
        self._registered = False
        self._next_keepalive = 0.0
        self._next_check = 0.0
        self._leader_dirty = True
        self._watch_gen = 0
        self._watches = 0
        self._watching = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def role(self) -> Role:
        """LEADER only while the lease is surely alive, even if the thread has not noticed yet."""
        with self._lock:
            if self._role is Role.LEADER and time.monotonic() >= self._lease_deadline:
                return Role.STANDBY
            return self._role

    @property
    def epoch(self) -> int:
        """The current lease id (0 while there is none)."""
        return self._lease_id

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._who()} membership already started")
        name = f"membership-{self._info.stage}-{self._info.replica_id}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Revoke the lease (best effort, bounded) so that a standby takes over at once."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._stop_timeout_s)
            if self._thread.is_alive():
                _log.warning("%s membership thread still busy after stop", self._who())
        self._set_role(Role.STOPPED, "stopped")
        self._etcd.close()

    def _who(self) -> str:
        return f"stage={self._info.stage} replica={self._info.replica_id}"

    def _run(self) -> None:
        # Retry at least as often as keepalives are due, so that a lease outlives a short outage.
        backoff = _Backoff(max_s=self._ttl_s / 3)
        outage = _Outage(self._who())
        while not self._stopping.is_set():
            self._step_down_if_expired()
            try:
                self._step()
                backoff.reset()
                outage.ended()
                wait_s = self._next_wait_s()
            except _LeaseNotFound as exc:
                self._lose_lease(str(exc))
                wait_s = 0.0
            except EtcdUnavailable as exc:
                ETCD_CONNECTED.labels("membership").set(0)
                wait_s = backoff.next_s()
                outage.failed(exc, wait_s)
            except Exception:  # a bug must not end the thread: the lease would quietly lapse
                _log.exception("%s membership step failed", self._who())
                wait_s = backoff.next_s()
            self._wake.wait(wait_s)
            self._wake.clear()
        self._watch_gen += 1  # late events of the last watch are ignored
        if self._lease_id:
            self._release()

    def _step(self) -> None:
        now = time.monotonic()
        if not self._lease_id:
            self._grant()
        if not self._registered:
            self._etcd.put(self._replica_key, self._announced(), self._lease_id)
            self._registered = True
        if not self._watching:
            self._watch_leader()
        if now >= self._next_keepalive:
            self._keepalive()
        if self._leader_dirty or now >= self._next_check:
            self._reconcile()
        ETCD_CONNECTED.labels("membership").set(1)

    def _grant(self) -> None:
        sent = time.monotonic()
        lease_id, ttl_s = self._etcd.grant(self._ttl_s)
        with self._lock:
            self._lease_id, self._granted_ttl_s = lease_id, ttl_s
            self._lease_deadline = sent + ttl_s
        self._registered, self._leader_dirty = False, True
        self._next_keepalive = sent + ttl_s / 3
        _log.info("%s granted lease epoch=%d ttl=%ds", self._who(), lease_id, ttl_s)

    def _keepalive(self) -> None:
        sent = time.monotonic()
        ttl_s = self._etcd.keepalive(self._lease_id)
        if ttl_s <= 0:
            raise _LeaseNotFound(f"lease epoch={self._lease_id} expired")
        with self._lock:
            self._lease_deadline = sent + ttl_s
        self._next_keepalive = sent + self._granted_ttl_s / 3

    def _reconcile(self) -> None:
        """Read the leader key; campaign if it is free; lead iff it holds our lease."""
        self._leader_dirty = False
        current = self._etcd.get(self._leader_key)
        if current is None:
            _, current = self._etcd.create(self._leader_key, self._announced(), self._lease_id)
        self._next_check = time.monotonic() + self._granted_ttl_s
        if current is not None and current.lease_id == self._lease_id:
            self._set_role(Role.LEADER, "became leader")
        else:
            self._set_role(Role.STANDBY, "standby")

    def _watch_leader(self) -> None:
        self._watch_gen += 1
        gen = self._watch_gen

        def on_item(item: WatchItem) -> None:
            if gen != self._watch_gen:
                return
            if isinstance(item, _WatchBroken):
                self._watching = False
            self._leader_dirty = True
            self._wake.set()

        self._watching = True
        try:
            self._etcd.watch(self._leader_key, on_item)
        except (EtcdUnavailable, _Compacted) as exc:
            self._watching = False
            raise EtcdUnavailable(str(exc)) from exc
        self._watches += 1
        if self._watches > 1:
            ETCD_WATCH_RESTARTS.inc()
        self._leader_dirty = True

    def _step_down_if_expired(self) -> None:
        with self._lock:
            expired = self._role is Role.LEADER and time.monotonic() >= self._lease_deadline
        if expired:
            self._set_role(Role.STANDBY, "stepped down, lease may have expired")

    def _lose_lease(self, reason: str) -> None:
        self._set_role(Role.STANDBY, f"lost lease ({reason})")
        with self._lock:
            self._lease_id = 0
        self._registered = False

    def _release(self) -> None:
        try:
            self._etcd.revoke(self._lease_id)
            _log.info("%s revoked lease epoch=%d", self._who(), self._lease_id)
        except EtcdUnavailable as exc:
            _log.warning("%s could not revoke epoch=%d: %s", self._who(), self._lease_id, exc)

    def _announced(self) -> bytes:
        return dataclasses.replace(self._info, lease_id=self._lease_id).to_json()

    def _next_wait_s(self) -> float:
        until = min(self._next_keepalive, self._next_check)
        if self._role is Role.LEADER:
            until = min(until, self._lease_deadline)
        return max(0.0, until - time.monotonic())

    def _set_role(self, role: Role, why: str) -> None:
        with self._lock:
            before = self._role
            if before is role or before is Role.STOPPED:  # stopped is final
                return
            self._role = role
        _log.info("%s %s epoch=%d", self._who(), why, self._lease_id)
        if role is Role.LEADER:
            LEADERSHIP_CHANGES.labels(str(self._info.stage)).inc()
        if self._on_role_change is not None:
            try:
                self._on_role_change(role)
            except Exception:
                _log.exception("%s on_role_change(%s) failed", self._who(), role.value)


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
        self._prefix = stages_prefix(cluster)
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = 2 * request_timeout_s + 1.0
        self._etcd = _Etcd(url, request_timeout_s)
        self._backoff = _Backoff(max_s=max_backoff_s)
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
        outage = _Outage("routing table")
        while not self._stopping.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                self._watch()
                self._backoff.reset()
                outage.ended()
                relist = self._follow()
            except _Compacted:
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
            if isinstance(item, _WatchBroken):
                if item.compacted:
                    return True
                raise EtcdUnavailable(item.reason)
            self._apply(item)
        return False

    def _apply(self, changes: list[_Change]) -> None:
        for change in changes:
            if change.value is None:
                self._entries.pop(change.key, None)
            else:
                self._entries[change.key] = change.value
            self._revision = max(self._revision, change.revision)
        self._publish()

    def _publish(self) -> None:
        table = stage_views(self._prefix, self._entries)
        with self._lock:
            if table == self._table:
                return
            self._table = table
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
