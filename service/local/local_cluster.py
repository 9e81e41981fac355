"""A whole cluster on this machine: private Redis and etcd, shards for every stage, a coordinator."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import grpc

from actionmesh_client.client_tls import ClientTls, open_channel
from service.local.child_process import ChildProcess
from service.local.dev_certs import write_dev_certs
from service.local.embedded_etcd import EmbeddedEtcd
from service.local.embedded_redis import EmbeddedRedis
from service.local.embedded_redis_cluster import EmbeddedRedisCluster
from service.local.local_checkpoints import LocalCheckpoints
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.weights_files import onnx_stage_file
from service.runtime.advertise import WILDCARDS, format_host_port
from service.runtime.settings import ClusterSettings, CoordinatorSettings, Settings, ShardSettings
from service.runtime.tls import etcd_tls
from state.redis_url import read_secret

log = logging.getLogger(__name__)

# Where a child runs: the argv its command is run under (`ip netns exec NS`, say) and the
# address it binds and is reached at.
Placement = tuple[list[str], str]


def settings_flags(cls: type[Settings], overrides: Mapping[str, object]) -> list[str]:
    """`overrides` (field name -> value of `cls`) as the command-line flags that set them.

    An unknown name fails here, in the caller, rather than as a child that exits at start-up;
    the values are the child's to validate (with the flags the cluster adds)."""
    unknown = sorted(set(overrides) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"not settings of {cls.__name__}: {', '.join(unknown)}")
    flags: list[str] = []
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(value, list | tuple):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


class LocalCluster:
    """Start with `with LocalCluster(settings) as cluster:`; leaving the block stops everything.

    coordinator_overrides, shard_overrides: settings of every coordinator (CoordinatorSettings
    fields) and every shard (ShardSettings fields) this cluster starts, beyond what `settings`
    sets; passed to each child as flags, after the cluster's own (so they win).
    pin_shards: each stage's shards keep to a core of their own (stage K on the K-th core this
    process may use, round robin). checkpoint_remote: the checkpoint store's remote (an s3://
    URL, say); default a file:// folder in the work dir. place: where each shard and
    coordinator runs, by its name (shard-K-rR, coordinator, coordinator-N); default this host,
    at settings.host. trained: a weights directory (say from `actionmesh train`) the cluster
    serves, copied into the work dir and published like fresh weights; `model` is then its
    config."""

    def __init__(
        self,
        settings: ClusterSettings,
        model: ModelConfig | None = None,
        *,
        coordinator_overrides: Mapping[str, object] | None = None,
        shard_overrides: Mapping[str, object] | None = None,
        pin_shards: bool = False,
        checkpoint_remote: str | None = None,
        place: Callable[[str], Placement] | None = None,
        trained: Path | None = None,
    ) -> None:
        self.settings = settings
        self._place = place
        self._trained = trained
        if trained is not None:
            model = weights.read_info(trained).config
        self.model = model or ModelConfig(
            n_stages=settings.stages,
            seed=settings.seed,
            stage_boundaries=ModelConfig.boundaries_setting(settings.stage_boundaries),
        )
        self._coordinator_flags = settings_flags(CoordinatorSettings, coordinator_overrides or {})
        self._shard_flags = settings_flags(ShardSettings, shard_overrides or {})
        self._pin_shards = pin_shards
        self._checkpoint_remote = checkpoint_remote
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.work_dir = settings.work_dir or Path(".")
        self.redis: EmbeddedRedis | None = None
        self.redis_replicas: list[EmbeddedRedis] = []
        self.redis_cluster: EmbeddedRedisCluster | None = None
        self.redis_url = settings.redis_url or ""
        self.etcd: EmbeddedEtcd | None = None
        self.etcd_url = settings.etcd or ""
        self.checkpoints: LocalCheckpoints | None = None
        self.shards: list[ChildProcess] = []  # stage by stage, replica by replica
        self.coordinator: ChildProcess | None = None
        self._coordinators: list[ChildProcess] = []  # every one started, the main one too
        self.tls_dir: Path | None = None  # with settings.tls: ca.pem, <role>.pem, <role>.key
        # with settings.tls: the private Redis wants AUTH with the password in this file
        self.redis_password_file: Path | None = None

    @property
    def weights_dir(self) -> Path:
        return self.work_dir / "weights"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    def client_tls(self, identity: str = "robot-a") -> ClientTls | None:
        """What a robot of this identity presents (None without --tls)."""
        return None if self.tls_dir is None else ClientTls.from_dir(self.tls_dir, identity)

    def channel(self, identity: str = "robot-a") -> grpc.Channel:
        """A channel to the main coordinator: mutual TLS as `identity` when TLS is on."""
        tls = self.client_tls(identity)
        return open_channel(self.address, None if tls is None else tls.credentials())

    def placement(self, name: str) -> Placement:
        """Where the child `name` runs (see `place`)."""
        return ([], self.settings.host) if self._place is None else self._place(name)

    def address_of(self, child: ChildProcess) -> str:
        """host:port a client reaches the coordinator (or shard) `child` at."""
        host = self.placement(child.name)[1]
        host = "127.0.0.1" if host in WILDCARDS else host
        return format_host_port(host, child.ports["grpc_port"])

    @property
    def address(self) -> str:
        assert self.coordinator is not None, "cluster not started"
        return self.address_of(self.coordinator)

    @property
    def addresses(self) -> list[str]:
        """Every coordinator's address, the main one (`address`) first."""
        return [self.address_of(c) for c in self._coordinators]

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.settings.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="actionmesh-")
            self.work_dir = Path(self._tmp.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._trained is not None:
            self._copy_trained(self._trained)
        elif not (self.weights_dir / weights.MANIFEST).exists():
            weights.save(ActionModel(self.model), self.weights_dir)
        if self.settings.runtime != "torch":
            self._export_onnx()
        self.checkpoints = LocalCheckpoints(
            self.work_dir / "checkpoints", remote_url=self._checkpoint_remote
        )
        self.checkpoints.publish(self.weights_dir, promote=True)
        if self.settings.tls:
            self.tls_dir = self._certificates()
            if not self.redis_url:  # the private Redis (or Redis Cluster) wants AUTH
                self.redis_password_file = self._redis_password()
        if not self.redis_url:
            self.redis_url = self._start_redis()
        if not self.etcd_url:
            self.etcd = EmbeddedEtcd(
                self.work_dir / "etcd",
                start_timeout_s=self.settings.start_timeout_s,
                tls=etcd_tls(self.tls_dir, "etcd"),
            ).start()
            self.etcd_url = self.etcd.url
        self.shards = [
            self.start_shard(k, r)
            for k in range(self.model.n_stages)
            for r in range(self.settings.replicas)
        ]
        for shard in self.shards:
            shard.wait_ready(self.settings.start_timeout_s)
        self.coordinator = self.start_coordinator("coordinator", self.settings.port)
        for i in range(1, self.settings.coordinators):
            port = self.settings.port + i if self.settings.port else 0
            self.start_coordinator(f"coordinator-{i}", port)
        log.info(
            "cluster up: coordinator=%s redis=%s logs=%s",
            self.address,
            self.redis_url,
            self.log_dir,
        )

    def _copy_trained(self, source: Path) -> None:
        """The trained weights into the work dir, unless a previous run in the same --work-dir
        left that very version there (other weights there are replaced). File contents only:
        an installed package's read-only modes would stop the ONNX export writing beside them."""
        wanted = weights.read_info(source).version
        if (self.weights_dir / weights.MANIFEST).exists():
            if weights.read_info(self.weights_dir).version == wanted:
                return
            shutil.rmtree(self.weights_dir)
        self.weights_dir.mkdir(parents=True)
        for file in sorted(source.iterdir()):
            if file.is_file():
                shutil.copyfile(file, self.weights_dir / file.name)

    def _certificates(self) -> Path:
        """--tls-dir, or a throwaway CA and per-role certificates made in the work dir (kept
        if a previous run in the same --work-dir made them)."""
        if self.settings.tls_dir is not None:
            return self.settings.tls_dir
        folder = self.work_dir / "tls"
        if not (folder / "ca.pem").exists():
            write_dev_certs(folder)
        return folder

    def _redis_password(self) -> Path:
        """A new random password for the private Redis, in a 0600 file under secrets/."""
        path = self.work_dir / "secrets" / "redis-password"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            f.write(secrets.token_urlsafe(24) + "\n")
        return path

    def _tls_flags(self) -> list[str]:
        return [] if self.tls_dir is None else ["--tls-dir", str(self.tls_dir)]

    def _redis_flags(self) -> list[str]:
        if self.redis_password_file is None:
            return []
        return ["--redis-password-file", str(self.redis_password_file)]

    def _export_onnx(self) -> None:
        """ONNX shards serve the graphs exported beside the weights; export them (float32
        and int8) unless there, before the weights are published as a checkpoint version."""
        cfg = weights.read_info(self.weights_dir).config
        wanted = [onnx_stage_file(k, int8=q) for k in range(cfg.n_stages) for q in (False, True)]
        if all((self.weights_dir / name).is_file() for name in wanted):
            return
        from service.model.export import export

        export(self.weights_dir, self.weights_dir, "onnx")

    def _start_redis(self) -> str:
        """The private Redis primary (or Cluster), with the persistence and replicas settings
        ask for."""
        durability = self.settings.redis_durability
        password = None
        if self.redis_password_file is not None:
            password = read_secret(self.redis_password_file)
        if self.settings.redis_cluster_primaries:
            self.redis_cluster = EmbeddedRedisCluster(
                self.work_dir / "redis-cluster",
                primaries=self.settings.redis_cluster_primaries,
                replicas=self.settings.redis_replicas,
                appendfsync=None if durability == "none" else durability,
                start_timeout_s=self.settings.start_timeout_s,
                password=password,
            ).start()
            return self.redis_cluster.url
        primary = self.redis = EmbeddedRedis(
            self.work_dir / "redis",
            appendfsync=None if durability == "none" else durability,
            start_timeout_s=self.settings.start_timeout_s,
            password=password,
        ).start()
        self.redis_replicas = [
            EmbeddedRedis(
                self.work_dir / f"redis-replica-{i}",
                replica_of=primary,
                start_timeout_s=self.settings.start_timeout_s,
                password=password,
            ).start()
            for i in range(self.settings.redis_replicas)
        ]
        return primary.url

    def start_shard(
        self, stage: int, replica: int, weights_dir: Path | None = None
    ) -> ChildProcess:
        """Start (not wait for) replica `replica` of `stage`; it registers in etcd once ready.

        It serves the checkpoint store's CURRENT version from its own flash and follows the
        cluster's desired version; with `weights_dir`, those weights and nothing else."""
        assert self.checkpoints is not None, "cluster not started"
        if weights_dir is not None:
            source = ["--weights-dir", str(weights_dir)]
        else:
            source = [
                "--flash-dir",
                str(self.work_dir / "flash" / f"stage-{stage}-r{replica}"),
                "--remote",
                self.checkpoints.remote_url,
                "--trusted-keys",
                str(self.checkpoints.public_key),
            ]
        name = f"shard-{stage}-r{replica}"
        prefix, host = self.placement(name)
        args = ChildProcess.actionmesh(
            "shard",
            "--stage",
            str(stage),
            "--replica-id",
            f"stage-{stage}-r{replica}",
            "--etcd",
            self.etcd_url,
            "--cluster",
            self.settings.cluster,
            "--lease-ttl-s",
            str(self.settings.lease_ttl_s),
            *source,
            "--port",
            "0",
            "--torch-threads",
            str(self.settings.torch_threads),
            *self._pinned(stage),
            "--runtime",
            self.settings.runtime,
            *([] if self._place is None else ["--host", host]),
            *self._tls_flags(),
            *self._shard_flags,
        )
        return ChildProcess(name, [*prefix, *args], self.log_dir).start()

    def _pinned(self, stage: int) -> list[str]:
        if not self._pin_shards:
            return []
        cores = sorted(os.sched_getaffinity(0))
        return ["--cpus", str(cores[stage % len(cores)])]

    def replica_process(self, replica_id: str) -> ChildProcess:
        """The shard process that registered as `replica_id` (stage-K-rR)."""
        name = "shard-" + replica_id.removeprefix("stage-")
        return next(s for s in self.shards if s.name == name)

    def restart_replica(self, replica_id: str) -> ChildProcess:
        """Start a dead (or stop a live) replica again under the same id; wait until ready."""
        old = self.replica_process(replica_id)
        old.stop()
        stage, replica = replica_id.removeprefix("stage-").split("-r")
        new = self.start_shard(int(stage), int(replica))
        self.shards[self.shards.index(old)] = new
        new.wait_ready(self.settings.start_timeout_s)
        return new

    def metrics_targets(self) -> tuple[list[str], list[str]]:
        """host:port of every coordinator's and every shard's /metrics (the ops port)."""
        return (
            [f"127.0.0.1:{c.ports['metrics_port']}" for c in self._coordinators],
            [f"127.0.0.1:{s.ports['metrics_port']}" for s in self.shards],
        )

    def stage_addresses(self) -> list[str]:
        """Every shard's address, stage by stage, replica by replica."""
        return [f"127.0.0.1:{s.ports['grpc_port']}" for s in self.shards]

    def start_coordinator(self, name: str, port: int, *extra: str) -> ChildProcess:
        """Start (and wait for) a coordinator on this cluster's shards and Redis; `extra` flags
        come last (they win over the cluster's coordinator_overrides)."""
        child = ChildProcess(name, self.coordinator_command(name, port, *extra), self.log_dir)
        self._coordinators.append(child.start())
        child.wait_ready(self.settings.start_timeout_s)
        return child

    def coordinator_command(self, name: str, port: int, *extra: str) -> list[str]:
        """The command line of a coordinator on this cluster's shards and Redis, for a test
        that runs it itself (see start_coordinator)."""
        assert self.checkpoints is not None, "cluster not started"
        prefix, host = self.placement(name)
        args = ChildProcess.actionmesh(
            "coordinator",
            "--host",
            host,
            "--port",
            str(port),
            "--redis-url",
            self.redis_url,
            "--etcd",
            self.etcd_url,
            "--cluster",
            self.settings.cluster,
            "--batch-max-size",
            str(self.settings.batch_max_size),
            "--batch-max-wait-ms",
            str(self.settings.batch_max_wait_ms),
            "--session-ttl-s",
            str(self.settings.session_ttl_s),
            "--flash-dir",  # each version's student (FALLBACK) and quality table
            str(self.work_dir / "flash" / name),
            "--remote",
            self.checkpoints.remote_url,
            "--trusted-keys",
            str(self.checkpoints.public_key),
            *self._tls_flags(),
            *self._redis_flags(),
            *self._coordinator_flags,
            *extra,
        )
        return [*prefix, *args]

    def restart_coordinator(self, child: ChildProcess) -> ChildProcess:
        """Start a dead (or stop a live) coordinator again under its name and port; wait until
        ready. The main one (`address`) stays the main one."""
        index = self._coordinators.index(child)
        child.stop()
        new = self.start_coordinator(child.name, child.ports["grpc_port"])
        self._coordinators.pop()  # appended by start_coordinator: put it back in its place
        self._coordinators[index] = new
        if self.coordinator is child:
            self.coordinator = new
        return new

    @property
    def coordinators(self) -> list[ChildProcess]:
        """Every coordinator process, the main one first."""
        return list(self._coordinators)

    def stop(self) -> None:
        """Coordinator first (no new steps), then shards (all at once), then Redis and etcd."""
        for coordinator in self._coordinators:
            coordinator.stop()
        for shard in self.shards:
            shard.terminate()
        for shard in self.shards:
            shard.stop()
        for replica in self.redis_replicas:
            replica.stop()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
            self.redis_cluster = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
