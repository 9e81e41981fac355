"""A private Redis Cluster for tests and local sizing runs: n primaries (and replicas) on
127.0.0.1, each an EmbeddedRedis with cluster-enabled, formed from Python (CLUSTER ADDSLOTS,
MEET, REPLICATE), so no redis-cli is needed. Stopped by PID like every EmbeddedRedis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import redis

from service.local.embedded_redis import (
    POLL_INTERVAL_S,
    AppendFsync,
    EmbeddedRedis,
    EmbeddedRedisError,
    probe_client,
)
from service.local.lifecycle import Lifecycle

_log = logging.getLogger(__name__)

SLOTS = 16384
# Short, so a test's failover is quick; production keeps redis's 15 s or sets its own.
NODE_TIMEOUT_MS = 2000


class EmbeddedRedisCluster(Lifecycle):
    """`primaries` primaries, each with `replicas` replicas, sharing the 16384 slots evenly."""

    def __init__(
        self,
        base_dir: Path,
        *,
        primaries: int = 3,
        replicas: int = 0,
        appendfsync: AppendFsync | None = None,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        password: str | None = None,
    ) -> None:
        """password: every node requires AUTH with it (and replicas give it to their primary);
        the store URL does not carry it."""
        if primaries < 1 or replicas < 0:
            raise ValueError(f"need primaries >= 1 and replicas >= 0, got {primaries}, {replicas}")
        self._base_dir = base_dir
        self._primaries = primaries
        self._replicas = replicas
        self._start_timeout_s = start_timeout_s
        self._password = password
        self.nodes = [
            EmbeddedRedis(
                base_dir / f"node-{i}",
                appendfsync=appendfsync,
                cluster_node_timeout_ms=node_timeout_ms,
                start_timeout_s=start_timeout_s,
                stop_timeout_s=stop_timeout_s,
                password=password,
            )
            for i in range(primaries * (1 + replicas))
        ]
        self._started = False

    @property
    def primary_nodes(self) -> list[EmbeddedRedis]:
        """The nodes started as primaries (a failover may have promoted others since)."""
        return self.nodes[: self._primaries]

    @property
    def url(self) -> str:
        """The store URL: every node as a start-up node."""
        if not self._started:
            raise EmbeddedRedisError("the cluster is not started; call start() first")
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> Self:
        """Start every node, give each primary its slots, introduce every node to the first,
        attach the replicas, and wait until every node reports the cluster ok."""
        try:
            for node in self.nodes:
                node.start()
            self._started = True
            self._form()
        except BaseException:
            self.stop()
            raise
        _log.info(
            "redis cluster ready: %d primaries, %d replicas each, ports %s",
            self._primaries,
            self._replicas,
            [node.port for node in self.nodes],
        )
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_ok(self) -> None:
        """Wait until every running node reports the cluster ok (after a node's restart)."""
        self._wait("the cluster is ok on every node", self._all_ok)

    def _form(self) -> None:
        ids = [self._command(node.port, "CLUSTER", "MYID") for node in self.nodes]
        # Distinct epochs from the start, as redis-cli --cluster create gives them: nodes that
        # share one settle it by bumping, and a failover meanwhile can lose its election.
        for epoch, node in enumerate(self.nodes, start=1):
            self._command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        per_primary = -(-SLOTS // self._primaries)
        for i, node in enumerate(self.primary_nodes):
            slots = range(i * per_primary, min(SLOTS, (i + 1) * per_primary))
            self._command(node.port, "CLUSTER", "ADDSLOTS", *slots)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._command(node.port, "CLUSTER", "MEET", "127.0.0.1", first.port)
        self._wait("every node knows every other", self._all_known)
        replicas = self.nodes[self._primaries :]
        for j, replica in enumerate(replicas):
            self._command(replica.port, "CLUSTER", "REPLICATE", ids[j % self._primaries])
        self._wait("the cluster is ok on every node", self._all_ok)

    def _all_known(self) -> bool:
        return all(
            int(self._cluster_info(node.port).get("cluster_known_nodes", 0)) == len(self.nodes)
            for node in self.nodes
        )

    def _all_ok(self) -> bool:
        for node in self.nodes:
            info = self._cluster_info(node.port)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
        for node in self.primary_nodes:
            with probe_client(node.port, self._password) as client:
                linked = int(client.info("replication").get("connected_slaves", 0))
            if linked < self._replicas:
                return False
        return True

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while not done():
            if time.monotonic() > deadline:
                views = {node.port: self._cluster_info(node.port) for node in self.nodes}
                raise EmbeddedRedisError(
                    f"redis cluster: not within {self._start_timeout_s}s: {what}: {views}"
                )
            time.sleep(POLL_INTERVAL_S * 5)

    def _command(self, port: int, *args: object) -> str:
        with probe_client(port, self._password) as client:
            return str(client.execute_command(*args))

    def _cluster_info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of the node on port as text fields; {} while it does not answer."""
        try:
            text = self._command(port, "CLUSTER", "INFO")
        except (OSError, redis.RedisError):
            return {}
        fields = (line.partition(":") for line in text.splitlines() if ":" in line)
        return {name: value.strip() for name, _, value in fields}
