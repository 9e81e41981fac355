"""Stage leadership against real etcd processes on loopback: elections, handover, lost leases,
a paused leader, an etcd restart, and the raft leader of a 3-member cluster killed."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.local.embedded_etcd import EmbeddedEtcd, EmbeddedEtcdCluster
from state.etcd_membership import EtcdReplicaMembership
from state.etcd_routing import EtcdRoutingTable
from state.leadership import ReplicaInfo, Role, StageView
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

TTL_S = 2.0
# An expired lease is noticed by etcd's expiry loop (every 0.5 s) and deleted through raft.
EXPIRY_MARGIN_S = 1.5
CHILD_START_TIMEOUT_S = 15.0
REPO = Path(__file__).resolve().parents[2]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class ReplicaChild:
    """tests/support/replica_child.py in its own process: the test reads its role lines."""

    def __init__(self, url: str, cluster: str, stage: int, replica_id: str, log_dir: Path) -> None:
        self.replica_id = replica_id
        self.roles: list[tuple[str, int]] = []
        self._stderr_path = log_dir / f"{replica_id}.stderr"
        args = [url, cluster, str(stage), replica_id, str(TTL_S)]
        with self._stderr_path.open("wb") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.replica_child", *args],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            _, role, epoch = line.decode().split()
            self.roles.append((role, int(epoch)))

    def wait_role(self, role: Role, timeout_s: float, since: int = 0) -> int:
        """The epoch of the first `role` line from index `since` on."""

        def seen() -> bool:
            if self._proc.poll() is not None:
                tail = self._stderr_path.read_text(errors="replace")[-2000:]
                raise AssertionError(f"{self.replica_id} exited {self._proc.returncode}:\n{tail}")
            return any(r == role.value for r, _ in self.roles[since:])

        wait_for(seen, timeout_s, f"{self.replica_id} reports {role.value}")
        return next(e for r, e in self.roles[since:] if r == role.value)

    def signal(self, signum: signal.Signals) -> None:
        os.kill(self._proc.pid, signum)

    def close(self) -> None:
        """Close stdin: the child stops (revoking its lease); SIGKILL if it does not exit."""
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
        if self._proc.stdin is not None:
            with suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class CuttableProxy:
    """A loopback TCP forwarder to `port` whose connections can be cut, as by a partition."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until restore()."""
        self._cut.set()
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            _close(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    _close(src)
    _close(dst)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(tmp_path_factory.mktemp("etcd")) as embedded:
        yield embedded


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def cluster() -> str:
    return f"test-{secrets.token_hex(4)}"


def membership(
    closing: ExitStack,
    url: str,
    cluster: str,
    stage: int,
    replica_id: str,
    on_role_change: Callable[[Role], None] | None = None,
) -> EtcdReplicaMembership:
    info = ReplicaInfo(stage, replica_id, f"{replica_id}.invalid:1", "v1")
    member = EtcdReplicaMembership(url, cluster, info, TTL_S, on_role_change=on_role_change)
    member.start()
    closing.callback(member.stop)
    return member


def routing_table(closing: ExitStack, url: str, cluster: str) -> EtcdRoutingTable:
    table = EtcdRoutingTable(url, cluster)
    table.start()
    closing.callback(table.stop)
    return table


def child(
    closing: ExitStack, url: str, cluster: str, stage: int, name: str, log_dir: Path
) -> ReplicaChild:
    replica = ReplicaChild(url, cluster, stage, name, log_dir)
    closing.callback(replica.close)
    return replica


def leader_of(table: EtcdRoutingTable, stage: int) -> ReplicaInfo | None:
    view = table.snapshot().get(stage)
    return view.leader if view else None


def replicas_of(table: EtcdRoutingTable, stage: int) -> dict[str, ReplicaInfo]:
    view = table.snapshot().get(stage)
    return view.replicas if view else {}


def shows_leader(table: EtcdRoutingTable, stage: int, member: EtcdReplicaMembership) -> bool:
    leader = leader_of(table, stage)
    return leader is not None and leader.lease_id == member.epoch != 0


def the_leader(members: list[EtcdReplicaMembership]) -> EtcdReplicaMembership | None:
    """The one LEADER while every other member is STANDBY, else None."""
    roles = [m.role for m in members]
    if sorted(r.value for r in roles) != sorted(["leader"] + ["standby"] * (len(members) - 1)):
        return None
    return members[roles.index(Role.LEADER)]


def test_one_leader_and_handover_on_stop(
    etcd: EmbeddedEtcd, closing: ExitStack, cluster: str
) -> None:
    changes_before = metric("actionmesh_leadership_changes_total", stage="1")
    table = routing_table(closing, etcd.url, cluster)
    members = [membership(closing, etcd.url, cluster, 1, name) for name in ("a", "b")]
    wait_for(lambda: the_leader(members), 5, "exactly one leader, one standby")
    leader = the_leader(members)
    assert leader is not None
    (standby,) = [m for m in members if m is not leader]
    wait_for(lambda: shows_leader(table, 1, leader), 5, "table shows the leader")
    wait_for(lambda: replicas_of(table, 1).keys() == {"a", "b"}, 5, "table lists both")

    start = time.monotonic()
    leader.stop()
    took = wait_for(lambda: standby.role is Role.LEADER, TTL_S, "standby takes over")
    assert took < TTL_S / 2, f"handover took {took:.2f}s; the lease should be revoked, not expire"
    assert leader.role is Role.STOPPED
    wait_for(lambda: shows_leader(table, 1, standby), 5, "table follows the new leader")
    wait_for(lambda: len(replicas_of(table, 1)) == 1, 5, "the stopped one is gone")
    print(f"handover after stop: {took * 1000:.0f} ms, table {time.monotonic() - start:.3f}s")
    assert metric("actionmesh_leadership_changes_total", stage="1") == changes_before + 2


def test_a_retired_standby_never_takes_over_and_a_retired_leader_leads_until_stop(
    etcd: EmbeddedEtcd, closing: ExitStack, cluster: str
) -> None:
    """Both replicas of a stage stopping at once (a cluster's end): the one that stops second
    must not become leader when the first releases the key."""
    table = routing_table(closing, etcd.url, cluster)
    members = [membership(closing, etcd.url, cluster, 1, name) for name in ("a", "b")]
    wait_for(lambda: the_leader(members), 5, "exactly one leader, one standby")
    leader = the_leader(members)
    assert leader is not None
    (standby,) = [m for m in members if m is not leader]
    for member in members:
        member.retire()
    standby.announce(standby.info)  # a version follower's announce does not undo it
    time.sleep(0.5)
    assert (leader.role, standby.role) == (Role.LEADER, Role.STANDBY), "a leader keeps leading"
    leader.stop()
    wait_for(lambda: leader_of(table, 1) is None, 5, "the leader key released")
    time.sleep(TTL_S)  # the standby's watch fires at once, and it rechecks every TTL
    assert standby.role is Role.STANDBY
    assert leader_of(table, 1) is None, "the retired standby took the leader key"


def test_standby_leads_when_leader_process_is_killed(
    etcd: EmbeddedEtcd, closing: ExitStack, cluster: str, tmp_path: Path
) -> None:
    leader = child(closing, etcd.url, cluster, 0, "doomed", tmp_path)
    leader.wait_role(Role.LEADER, CHILD_START_TIMEOUT_S)
    standby = membership(closing, etcd.url, cluster, 0, "survivor")
    wait_for(lambda: standby.role is Role.STANDBY, 5, "in-process replica is standby")

    leader.signal(signal.SIGKILL)  # no revoke: the lease must expire
    took = wait_for(lambda: standby.role is Role.LEADER, TTL_S + 5, "standby takes over")
    print(f"takeover after kill -9: {took:.2f}s (ttl {TTL_S}s)")
    assert took < TTL_S + EXPIRY_MARGIN_S


def test_paused_leader_steps_down_and_never_overwrites(
    etcd: EmbeddedEtcd, closing: ExitStack, cluster: str, tmp_path: Path
) -> None:
    table = routing_table(closing, etcd.url, cluster)
    leaders_seen: list[str | None] = []

    def record(views: dict[int, StageView]) -> None:
        leader = views[2].leader if 2 in views else None
        leaders_seen.append(leader.replica_id if leader else None)

    table.subscribe(record)
    paused = child(closing, etcd.url, cluster, 2, "paused", tmp_path)
    old_epoch = paused.wait_role(Role.LEADER, CHILD_START_TIMEOUT_S)
    standby_roles: list[Role] = []
    standby = membership(closing, etcd.url, cluster, 2, "fresh", standby_roles.append)
    wait_for(lambda: standby.role is Role.STANDBY, 5, "in-process replica is standby")

    paused.signal(signal.SIGSTOP)
    wait_for(lambda: standby.role is Role.LEADER, TTL_S + 5, "standby leads while paused")
    wait_for(lambda: shows_leader(table, 2, standby), 5, "table shows the new leader")
    takeover = len(leaders_seen)

    since = len(paused.roles)
    paused.signal(signal.SIGCONT)
    paused.wait_role(Role.STANDBY, 10, since=since)

    def re_registered() -> bool:
        info = replicas_of(table, 2).get("paused")
        return info is not None and info.lease_id != old_epoch

    wait_for(re_registered, 10, "the old leader registers again with a new lease")
    paused.close()  # stops and revokes: whatever it would have done is in the table's history
    wait_for(lambda: "paused" not in replicas_of(table, 2), 5, "the old leader is gone")

    assert [role for role, _ in paused.roles[since:]] == ["standby", "stopped"]
    assert leaders_seen[takeover - 1 :] and set(leaders_seen[takeover - 1 :]) == {"fresh"}
    assert standby_roles == [Role.STANDBY, Role.LEADER]
    assert shows_leader(table, 2, standby)


def test_routing_table_lists_again_when_its_revision_was_compacted(
    etcd: EmbeddedEtcd, closing: ExitStack, cluster: str
) -> None:
    proxy = CuttableProxy(etcd.client_port)
    closing.callback(proxy.close)
    table = routing_table(closing, f"etcd://127.0.0.1:{proxy.port}", cluster)
    gone = membership(closing, etcd.url, cluster, 0, "gone")
    wait_for(lambda: shows_leader(table, 0, gone), 5, "table shows the first replica")

    proxy.cut()
    wait_for(lambda: not table.connected, 5, "table notices the partition")
    arrived = membership(closing, etcd.url, cluster, 1, "arrived")
    wait_for(lambda: arrived.role is Role.LEADER, 5, "a replica registers during the partition")
    gone.stop()
    assert etcd.compact() > table.revision + 1  # the changes it missed are no longer in history

    proxy.restore()
    wait_for(lambda: table.connected, 10, "table reconnects")
    wait_for(lambda: shows_leader(table, 1, arrived), 10, "the change it missed shows up")
    wait_for(lambda: 0 not in table.snapshot(), 5, "the stopped replica is gone")


def test_routing_table_follows_through_etcd_restart(
    tmp_path: Path, closing: ExitStack, cluster: str
) -> None:
    etcd = closing.enter_context(EmbeddedEtcd(tmp_path / "etcd"))
    table = routing_table(closing, etcd.url, cluster)
    first = membership(closing, etcd.url, cluster, 0, "first")
    wait_for(lambda: shows_leader(table, 0, first), 5, "table shows the first leader")
    restarts_before = metric("actionmesh_etcd_watch_restarts_total")

    etcd.stop()
    wait_for(lambda: not table.connected, 5, "table notices etcd is gone")
    assert leader_of(table, 0) is not None, "the last table is kept while disconnected"
    wait_for(lambda: first.role is not Role.LEADER, TTL_S + 1, "the leader steps down")

    etcd.restart()
    wait_for(lambda: table.connected, 10, "table reconnects")
    late = membership(closing, etcd.url, cluster, 1, "late")
    wait_for(lambda: shows_leader(table, 1, late), 10, "a change after the restart shows up")
    wait_for(lambda: shows_leader(table, 0, first), 10, "the first replica leads again")
    assert metric("actionmesh_etcd_watch_restarts_total") > restarts_before


def test_raft_leader_killed_in_three_member_cluster(
    tmp_path: Path, closing: ExitStack, cluster: str
) -> None:
    """kill -9 the raft leader, then each other member in turn (restarting in between): the
    member the table and the replicas talk to dies at some point, whichever one it is."""
    etcd = closing.enter_context(EmbeddedEtcdCluster(3, tmp_path / "etcd"))
    table = routing_table(closing, etcd.url, cluster)
    members = [membership(closing, etcd.url, cluster, 0, name) for name in ("a", "b")]
    wait_for(lambda: the_leader(members), 10, "one leader among a and b")

    def agreed() -> bool:
        leader = the_leader(members)
        return leader is not None and shows_leader(table, 0, leader)

    victims = [etcd.leader_member()]
    victims += [m for m in etcd.members if m is not victims[0]]
    for stage, victim in enumerate(victims, start=1):
        victim.kill()
        assert etcd.leader_member() is not victim
        late = membership(closing, etcd.url, cluster, stage, f"late{stage}")
        shown = partial(shows_leader, table, stage, late)
        wait_for(shown, 15, f"update {stage} after a kill")
        wait_for(agreed, 15, "stage 0 has one leader and the table shows it")
        victim.restart()
