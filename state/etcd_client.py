"""The one file that imports pyetcd: `EtcdConnection` wraps its multi-endpoint client with
types, failover and error translation (every failure is EtcdUnavailable, LeaseNotFound or
RevisionCompacted), plus the retry pacing shared by the leadership classes."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import pyetcd
import pyetcd.events
import pyetcd.exceptions
from pyetcd import etcdrpc

from state.etcd_url import EtcdTls, parse_etcd_url

_log = logging.getLogger(__name__)

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


class EtcdUnavailable(Exception):
    """etcd did not answer (all endpoints failed, timed out, or lost quorum); retry later."""


class LeaseNotFound(Exception):
    """The lease expired or was revoked: its keys are gone."""


class RevisionCompacted(Exception):
    """The revision to watch from was compacted: list again."""


@dataclass(frozen=True)
class KeyValue:
    value: bytes
    lease_id: int


@dataclass(frozen=True)
class KeyChange:
    key: str
    value: bytes | None  # None: deleted
    revision: int


@dataclass(frozen=True)
class WatchBroken:
    reason: str
    compacted: bool = False


WatchItem = list[KeyChange] | WatchBroken


@dataclass(frozen=True)
class MemberStatus:
    """What the member that answered says of itself (etcd's Maintenance Status)."""

    member_id: int
    leader_id: int  # 0 while it knows of no leader
    raft_term: int
    revision: int  # the store's current revision


class EtcdConnection:
    """pyetcd's multi-endpoint client, typed, failing over, every error one of ours.

    With TLS, the client certificate follows its files on disk without a restart: when a call
    fails as EtcdUnavailable (a refused handshake included) and the files changed since the
    client was made, the next calls go through a new client made from the new files. Healthy
    calls do no more than before. A replaced client is closed with this object, so that a
    watch still delivering on it goes on until its owner restarts it."""

    def __init__(self, url: str, request_timeout_s: float, tls: EtcdTls | None = None) -> None:
        """tls: mutual TLS to every endpoint (None: plaintext)."""
        self._url, self._timeout_s, self._tls = url, request_timeout_s, tls
        self._lock = threading.Lock()
        self._retired: list[pyetcd.MultiEndpointEtcd3Client] = []
        self._stamp = () if tls is None else tls.stamp()
        self._client = self._connect()

    def _connect(self) -> pyetcd.MultiEndpointEtcd3Client:
        """A client reading the TLS files now."""
        tls = self._tls
        creds = None
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes(),
                private_key=tls.key.read_bytes(),
                certificate_chain=tls.cert.read_bytes(),
            )
        endpoints = [
            pyetcd.Endpoint(
                host,
                port,
                secure=tls is not None,
                creds=creds,
                time_retry=ENDPOINT_RETRY_S,
                opts=_CHANNEL_OPTIONS,
            )
            for host, port in parse_etcd_url(self._url)
        ]
        return pyetcd.MultiEndpointEtcd3Client(
            endpoints=endpoints, timeout=self._timeout_s, failover=True
        )

    @contextmanager
    def _call(self, what: str) -> Iterator[pyetcd.MultiEndpointEtcd3Client]:
        """The client to call, errors translated; after an EtcdUnavailable, a new client if
        the TLS files were rotated."""
        client = self._client
        try:
            with _translated(what):
                yield client
        except EtcdUnavailable:
            if self._tls is not None:
                self._renew_if_rotated(client)
            raise

    def _renew_if_rotated(self, failed: pyetcd.MultiEndpointEtcd3Client) -> None:
        assert self._tls is not None
        with self._lock:
            if failed is not self._client:  # another thread's failure renewed it already
                return
            try:
                stamp = self._tls.stamp()
                if stamp == self._stamp:
                    return
                client = self._connect()
            except OSError as exc:  # mid-replacement: keep the current client
                _log.warning("etcd TLS: cannot re-read %s: %s", self._tls.cert, exc)
                return
            self._retired.append(self._client)
            self._client, self._stamp = client, stamp
        _log.info("etcd TLS: certificate files changed; reconnecting with %s", self._tls.cert)

    def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in s, which etcd may raise to its minimum)."""
        with self._call("grant lease") as client:
            lease = client.lease(ttl_s)
            return int(lease.id), int(lease.ttl)

    def keepalive(self, lease_id: int) -> int:
        """Refresh the lease; its TTL in s, 0 when it no longer exists."""
        with self._call("keep lease alive") as client:
            replies = list(client.refresh_lease(lease_id))
        if not replies:
            raise EtcdUnavailable("keepalive stream closed without a reply")
        return int(replies[0].TTL)

    def lease_ttl(self, lease_id: int) -> int:
        """The lease's remaining TTL in s; -1 once it expired or was revoked."""
        with self._call("lease time to live") as client:
            return int(client.get_lease_info(lease_id).TTL)

    def revoke(self, lease_id: int) -> None:
        try:
            with self._call("revoke lease") as client:
                client.revoke_lease(lease_id)
        except LeaseNotFound:
            pass

    def put(self, key: str, value: bytes, lease_id: int) -> None:
        with self._call(f"put {key}") as client:
            client.put(key, value, lease=lease_id)

    def get(self, key: str) -> KeyValue | None:
        with self._call(f"get {key}") as client:
            value, meta = client.get(key)
        return None if meta is None else KeyValue(bytes(value), int(meta.lease_id))

    def create(self, key: str, value: bytes, lease_id: int) -> tuple[bool, KeyValue | None]:
        """Put key only if it does not exist; (created, what the key holds now)."""
        with self._call(f"create {key}") as client:
            tx = client.transactions
            created, replies = client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, value, lease=lease_id)],
                failure=[tx.get(key)],
            )
        if created:
            return True, KeyValue(value, lease_id)
        found = [KeyValue(bytes(v), int(meta.lease_id)) for v, meta in replies[0]]
        return False, found[0] if found else None

    def replace_if_value(
        self, key: str, expected: bytes, value: bytes | None, lease_id: int
    ) -> bool:
        """Put `value` (delete the key when None) only if the key still holds `expected`."""
        with self._call(f"replace {key}") as client:
            tx = client.transactions
            action = tx.delete(key) if value is None else tx.put(key, value, lease=lease_id)
            done, _ = client.transaction(
                compare=[tx.value(key) == expected], success=[action], failure=[]
            )
        return bool(done)

    def list_prefix(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        """Every key under prefix and the store revision they were read at."""
        with self._call(f"list {prefix}") as client:
            reply = client.get_prefix_response(prefix)
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

        with self._call(f"watch {key}") as client:
            add = client.add_watch_prefix_callback if prefix else client.add_watch_callback
            return int(add(key, deliver, start_revision=start_revision))

    def member_status(self) -> MemberStatus:
        with self._call("status") as client:
            reply = client.maintenancestub.Status(etcdrpc.StatusRequest(), self._timeout_s)
        return MemberStatus(
            int(reply.header.member_id),
            int(reply.leader),
            int(reply.raftTerm),
            int(reply.header.revision),
        )

    def members(self) -> tuple[int, list[tuple[int, str]]]:
        """(the id of the member that answered, every member's (id, name))."""
        with self._call("list members") as client:
            reply = client.clusterstub.MemberList(etcdrpc.MemberListRequest(), self._timeout_s)
        return int(reply.header.member_id), [(int(m.ID), str(m.name)) for m in reply.members]

    def compact(self, revision: int) -> None:
        """Drop the history before `revision`, waiting until it is gone from the database."""
        with self._call(f"compact to revision {revision}") as client:
            client.compact(revision, physical=True)

    def close(self) -> None:
        with self._lock:
            for client in (*self._retired, self._client):
                client.close()
            self._retired.clear()


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn pyetcd's and gRPC's errors into EtcdUnavailable / LeaseNotFound / RevisionCompacted."""
    try:
        yield
    except pyetcd.exceptions.RevisionCompactedError as exc:
        raise RevisionCompacted(f"{what}: revision {exc.compacted_revision} compacted") from exc
    except grpc.RpcError as exc:  # pyetcd re-raises codes it has no exception for as they are
        code = exc.code() if isinstance(exc, grpc.Call) else None
        detail = exc.details() if isinstance(exc, grpc.Call) else repr(exc)
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in (detail or ""):
            raise LeaseNotFound(f"{what}: {detail}") from exc
        raise EtcdUnavailable(f"{what}: {code} {detail}") from exc
    except pyetcd.Etcd3Exception as exc:  # connection failed, timed out, no endpoint left
        raise EtcdUnavailable(f"{what}: {type(exc).__name__} {exc}") from exc


def _watch_item(response: object) -> WatchItem:
    if isinstance(response, pyetcd.exceptions.RevisionCompactedError):
        return WatchBroken(f"revision {response.compacted_revision} compacted", compacted=True)
    if response is None or isinstance(response, BaseException):
        detail = response.details() if isinstance(response, grpc.Call) else repr(response)
        return WatchBroken(f"watch stream ended: {detail}")
    return [
        KeyChange(
            event.key.decode(),
            None if isinstance(event, pyetcd.events.DeleteEvent) else bytes(event.value),
            int(event.mod_revision),
        )
        for event in getattr(response, "events", [])
    ]


class Backoff:
    """Doubling delays with jitter, capped; reset after a success."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> None:
        self._initial_s, self._max_s, self._failures = initial_s, max_s, 0

    def next_s(self) -> float:
        cap = min(self._max_s, self._initial_s * 2**self._failures)
        self._failures += 1
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self._failures = 0


class Outage:
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
