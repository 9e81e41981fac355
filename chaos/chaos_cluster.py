"""The cluster a chaos run breaks: a Redis primary with a replica (and a standby chained off the
replica, so that WAIT 1 still has a replica after a promotion) behind three Sentinels, a
3-member etcd, an S3 endpoint (moto) holding the checkpoints, and a LocalCluster of shards
(two replicas per stage) and coordinators on top of them. Every process is on 127.0.0.1;
or, given hosts (network namespaces, service/local/netns.py, see chaos/hosts.py), each shard and
each coordinator on a host of its own and the rest on host MAIN, with the caller, each at its
host's address."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from chaos.hosts import MAIN, host_of
from chaos.moto_s3 import CREDENTIALS, MotoS3
from service.local.embedded_etcd import EmbeddedEtcd, EmbeddedEtcdCluster
from service.local.embedded_redis import EmbeddedRedis
from service.local.embedded_sentinel import EmbeddedSentinels
from service.local.local_cluster import LocalCluster, Placement
from service.local.netns import HostMap
from service.model.config import ModelConfig
from service.runtime.settings import ClusterSettings

SENTINELS = 3
BUCKET = "actionmesh-chaos"
ETCD_MEMBERS = 3


class ChaosCluster:
    """`with ChaosCluster(work_dir, ...) as cluster:` brings everything up; leaving stops it.

    `pids()` names every process running now; a run collects it before and after each fault,
    so that the end can check that every one it ever saw is gone."""

    def __init__(
        self,
        work_dir: Path,
        model: ModelConfig,
        *,
        replicas: int = 2,
        coordinators: int = 2,
        lease_ttl_s: float = 2.0,
        redis_durability: str = "everysec",
        start_timeout_s: float = 120.0,
        coordinator_overrides: dict[str, object] | None = None,
        hosts: HostMap | None = None,
    ) -> None:
        """hosts: the hosts of host_names (made by the caller, who runs in MAIN)."""
        self.work_dir, self.model = work_dir, model
        self.hosts = hosts
        self.host = "127.0.0.1" if hosts is None else hosts.address[MAIN]
        self._replicas, self._coordinators, self._lease_ttl_s = replicas, coordinators, lease_ttl_s
        self._durability = redis_durability
        self._start_timeout_s = start_timeout_s
        self._coordinator_overrides = coordinator_overrides or {}
        self._stack = ExitStack()
        self.s3: MotoS3 | None = None
        self.redis: list[EmbeddedRedis] = []  # primary, replica, standby (as started)
        self.sentinels: EmbeddedSentinels | None = None
        self.etcd: EmbeddedEtcdCluster | None = None
        self.local: LocalCluster | None = None

    @property
    def cluster(self) -> LocalCluster:
        assert self.local is not None, "chaos cluster not started"
        return self.local

    def __enter__(self) -> ChaosCluster:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _start(self) -> None:
        stack, work = self._stack, self.work_dir
        self.s3 = stack.enter_context(MotoS3(work / "logs", host=self.host))
        self.s3.create_bucket(BUCKET)
        os.environ.update(CREDENTIALS)  # what the children's boto3 (shards, coordinators) find
        fsync = None if self._durability == "none" else self._durability
        on = {"appendfsync": fsync, "host": self.host}
        primary = EmbeddedRedis(work / "redis-0", **on)  # type: ignore[arg-type]
        replica = EmbeddedRedis(work / "redis-1", replica_of=primary, **on)  # type: ignore[arg-type]
        standby = EmbeddedRedis(work / "redis-2", replica_of=replica, **on)  # type: ignore[arg-type]
        self.redis = [stack.enter_context(r) for r in (primary, replica, standby)]
        self.sentinels = stack.enter_context(
            EmbeddedSentinels(SENTINELS, work / "sentinels", primary.port, host=self.host)
        )
        self.sentinels.wait_converged(replicas=1, timeout_s=30.0)
        self.etcd = stack.enter_context(
            EmbeddedEtcdCluster(
                ETCD_MEMBERS, work / "etcd", start_timeout_s=self._start_timeout_s, host=self.host
            )
        )
        settings = ClusterSettings.model_validate(
            {
                "stages": self.model.n_stages,
                "replicas": self._replicas,
                "coordinators": self._coordinators,
                "port": 0,
                "work_dir": work / "cluster",
                "redis_url": self.sentinels.url,
                "etcd": self.etcd.url,
                "lease_ttl_s": self._lease_ttl_s,
                "start_timeout_s": self._start_timeout_s,
            }
        )
        self.local = stack.enter_context(
            LocalCluster(
                settings,
                self.model,
                checkpoint_remote=self.s3.url(BUCKET, "checkpoints"),
                coordinator_overrides=self._coordinator_overrides,
                place=None if self.hosts is None else self._place,
            )
        )

    def _place(self, child: str) -> Placement:
        assert self.hosts is not None
        host = host_of(child)
        return self.hosts.run_in(host, []), self.hosts.address[host]

    def redis_primary(self) -> EmbeddedRedis | None:
        """The Redis the Sentinels name primary now."""
        assert self.sentinels is not None
        address = self.sentinels.primary_address()
        return next((r for r in self.redis if address and r.port == address[1]), None)

    def etcd_members(self) -> list[EmbeddedEtcd]:
        assert self.etcd is not None
        return list(self.etcd.members)

    def pids(self) -> dict[int, str]:
        """pid -> name of every process of this cluster running now."""
        found: dict[int, str] = {}
        if self.s3 is not None:
            found[self.s3.pid] = "moto-s3"
        for index, r in enumerate(self.redis):
            found[r.pid] = f"redis-{index}"
        if self.sentinels is not None:
            found.update({pid: "sentinel" for pid in self.sentinels.pids})
        if self.etcd is not None:
            for member in self.etcd.members:
                if member.running:
                    found[member.pid] = f"etcd-{member.name}"
        if self.local is not None:
            for child in [*self.local.shards, *self.local.coordinators]:
                if child.returncode() is None:
                    found[child.pid] = child.name
        return {pid: name for pid, name in found.items() if alive(pid)}


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
