"""A replica's side of stage leadership on etcd: hold a lease, register, campaign, step down.

The lease id is the epoch: a replica that loses its lease comes back with a new one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable

from state.etcd_client import (
    MIN_REQUEST_TIMEOUT_S,
    Backoff,
    EtcdConnection,
    EtcdUnavailable,
    LeaseNotFound,
    Outage,
    RevisionCompacted,
    WatchBroken,
    WatchItem,
)
from state.etcd_keys import leader_key, replica_key
from state.etcd_url import EtcdTls
from state.leadership import ReplicaInfo, Role
from state.store_metrics import ETCD_CONNECTED, ETCD_WATCH_RESTARTS, LEADERSHIP_CHANGES

_log = logging.getLogger(__name__)


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
        tls: EtcdTls | None = None,
    ) -> None:
        if "/" in info.replica_id or "/" in cluster or not info.replica_id:
            raise ValueError(f"replica_id {info.replica_id!r} and cluster {cluster!r}: no '/'")
        self._info = info
        self._ttl_s = max(1, math.ceil(lease_ttl_s))
        timeout_s = request_timeout_s or max(MIN_REQUEST_TIMEOUT_S, self._ttl_s / 3)
        self._stop_timeout_s = 3 * timeout_s + 1.0
        self._etcd = EtcdConnection(url, timeout_s, tls)
        self._leader_key = leader_key(cluster, info.stage)
        self._replica_key = replica_key(cluster, info.stage, info.replica_id)
        self._on_role_change = on_role_change
        self._lock = threading.Lock()
        self._role = Role.STARTING
        self._lease_id = 0
        self._granted_ttl_s = self._ttl_s
        self._lease_deadline = 0.0  # monotonic: our lease may have expired from then on
        self._registered = False
        self._info_gen = 0  # bumped by announce()
        self._published_gen = 0  # the generation last written to etcd
        self._campaigning = True
        self._retired = False  # retire(): never campaign again
        self._resign = False
        self._leader_value: bytes | None = None  # what we last wrote to the leader key
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

    @property
    def info(self) -> ReplicaInfo:
        return self._info

    def step_aside(self) -> None:
        """Give up leadership (if held) and stop campaigning until announce(), so that a
        standby takes over while this replica reloads its weights."""
        with self._lock:
            self._campaigning, self._resign = False, True
        self._wake.set()

    def announce(self, info: ReplicaInfo) -> None:
        """Advertise new details (a new model version) and campaign again."""
        if (info.stage, info.replica_id) != (self._info.stage, self._info.replica_id):
            raise ValueError(f"{self._who()} cannot announce another replica: {info}")
        with self._lock:
            self._info = dataclasses.replace(info, lease_id=0)
            self._info_gen += 1
            self._campaigning, self._leader_dirty = not self._retired, True
        self._wake.set()

    def retire(self) -> None:
        """Never campaign again, announce() or not: the process is stopping. A leader keeps
        the key until stop(); a standby never takes it, not even when the leader (stopping
        too, say) releases it first."""
        with self._lock:
            self._retired, self._campaigning = True, False
        self._wake.set()

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
        backoff = Backoff(max_s=self._ttl_s / 3)
        outage = Outage(self._who())
        while not self._stopping.is_set():
            self._step_down_if_expired()
            try:
                self._step()
                backoff.reset()
                outage.ended()
                wait_s = self._next_wait_s()
            except LeaseNotFound as exc:
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
        if self._resign:
            self._give_up_leadership()
        if not self._registered or self._published_gen != self._info_gen:
            gen = self._info_gen  # an announce() from now on is published at the next step
            self._etcd.put(self._replica_key, self._announced(), self._lease_id)
            self._refresh_leader_value()
            self._registered, self._published_gen = True, gen
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
            raise LeaseNotFound(f"lease epoch={self._lease_id} expired")
        with self._lock:
            self._lease_deadline = sent + ttl_s
        self._next_keepalive = sent + self._granted_ttl_s / 3

    def _give_up_leadership(self) -> None:
        if self._leader_value is not None:
            self._etcd.replace_if_value(self._leader_key, self._leader_value, None, self._lease_id)
            _log.info("%s stepped aside: leader key released", self._who())
        self._leader_value, self._resign, self._leader_dirty = None, False, True

    def _refresh_leader_value(self) -> None:
        """A leader that announced new details writes them to the leader key too."""
        value, held = self._announced(), self._leader_value
        if (
            held is not None
            and held != value
            and self._etcd.replace_if_value(self._leader_key, held, value, self._lease_id)
        ):
            self._leader_value = value

    def _reconcile(self) -> None:
        """Read the leader key; campaign if it is free; lead iff it holds our lease."""
        self._leader_dirty = False
        current = self._etcd.get(self._leader_key)
        if current is None and self._campaigning:
            _, current = self._etcd.create(self._leader_key, self._announced(), self._lease_id)
        if (
            current is not None
            and current.lease_id == self._lease_id
            and self._retired
            and self._role is not Role.LEADER
        ):  # won while retire() came: hand the key straight back rather than lead while stopping
            self._etcd.replace_if_value(self._leader_key, current.value, None, self._lease_id)
            current = None
        self._next_check = time.monotonic() + self._granted_ttl_s
        if current is not None and current.lease_id == self._lease_id:
            self._leader_value = current.value
            self._set_role(Role.LEADER, "became leader")
        else:
            self._leader_value = None
            self._set_role(Role.STANDBY, "standby")

    def _watch_leader(self) -> None:
        self._watch_gen += 1
        gen = self._watch_gen

        def on_item(item: WatchItem) -> None:
            if gen != self._watch_gen:
                return
            if isinstance(item, WatchBroken):
                self._watching = False
            self._leader_dirty = True
            self._wake.set()

        self._watching = True
        try:
            self._etcd.watch(self._leader_key, on_item)
        except (EtcdUnavailable, RevisionCompacted) as exc:
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
        self._leader_value = None
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
