"""Settings of the one-shot commands (demo, bench, ckpt, token, chaos, status, drain, plan,
export, certs, train): their flags, defaults and rules. The field groups they share, the
long-running processes' settings and the loading (config file < env vars < flags) are in
settings.py."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from service.runtime.settings import (
    CLUSTER_NAME,
    ClusterSettings,
    EtcdSettings,
    JsonOutputSettings,
    Settings,
    TlsSettings,
    etcd_url_field,
    flag_name,
    grpc_port_field,
    signing_key_field,
    stage_boundaries_field,
    stages_field,
    step_scope_only,
    trusted_keys_field,
)

# `actionmesh train` flags of the checkpoint the demo ships (service/bench/demo_weights/): a
# test retrains with them and checks that the version is the same.
DEMO_TRAINING_FLAGS = ("--quick", "--seed", "0", "--memory-iterations", "200")


class DemoSettings(ClusterSettings):
    port: int = grpc_port_field(0, "Coordinator ")
    weights_dir: Path | None = Field(
        None,
        description="Trained weights to serve (model.json + *.safetensors, as `actionmesh "
        "train` writes them); default the small checkpoint shipped with actionmesh, trained "
        f"on the reach task by `actionmesh train {' '.join(DEMO_TRAINING_FLAGS)}`. "
        "Their model has its own stages: --stages must match or be left out.",
    )
    seed: int = Field(0, description="Seed of the reach-task episodes the robot plays.")
    duration_s: float = Field(
        20.0,
        gt=0,
        description="How long the simulated robot runs: as many whole reach-task episodes "
        "(48 ticks each, a fresh session each) as fit, at least one; with a fault, more until "
        "the killed stage answers FULL again (at most --start-timeout-s more).",
    )
    rate_hz: float = Field(50.0, gt=0, description="Control rate of the simulated robot.")
    print_every: int = Field(10, ge=1, description="Print one table row every N ticks.")
    faults: bool = Field(
        True,
        description="kill -9 the leader of --kill-stage at --kill-stage-at-s and restart it "
        "--restart-after-s later: the answers turn EARLY_EXIT or FALLBACK, then FULL again. "
        "--no-faults for a plain run.",
    )
    kill_stage_at_s: float | None = Field(
        None,
        gt=0,
        description="When the fault strikes, in seconds into the run; default a quarter of "
        "--duration-s (the stage is back, and FULL again, before the end unless the machine is busy).",
    )
    kill_stage: int | None = Field(
        None,
        ge=0,
        description="The stage whose leader the fault kills; default the last stage (answers "
        "turn EARLY_EXIT, or FALLBACK with one stage).",
    )
    restart_after_s: float = Field(
        3.0, gt=0, description="How long the killed stage leader stays down."
    )
    when_dry: Literal["hold", "stop"] = Field(
        "hold",
        description="What the robot plays when its action buffer runs dry: hold the last "
        "command (the reach task's set-points are positions), or ramp it down to a stop.",
    )
    timeline: Path = Field(
        Path("actionmesh-demo-timeline.png"),
        description="The PNG written at the end: step latency and serve mode, each tick's "
        "command source, each episode's outcome, the fault marked.",
    )

    @model_validator(mode="after")
    def _fault_within_the_run(self) -> typing.Self:
        if not self.faults and (self.kill_stage_at_s is not None or self.kill_stage is not None):
            raise ValueError(
                "--kill-stage-at-s and --kill-stage set the fault: not with --no-faults"
            )
        if self.kill_stage is not None and self.kill_stage >= self.stages:
            raise ValueError(f"--kill-stage {self.kill_stage}: stages are 0..{self.stages - 1}")
        if self.kill_stage_at_s is not None and self.kill_stage_at_s >= self.duration_s:
            raise ValueError(
                f"--kill-stage-at-s {self.kill_stage_at_s} must be within --duration-s "
                f"{self.duration_s}"
            )
        return self

    @property
    def fault_at_s(self) -> float | None:
        """When the fault strikes; None with --no-faults."""
        if not self.faults:
            return None
        return self.kill_stage_at_s if self.kill_stage_at_s is not None else self.duration_s / 4


class BenchSettings(JsonOutputSettings, ClusterSettings):
    port: int = grpc_port_field(0, "Coordinator ")
    steps: int = Field(200, ge=10, description="Sequential steps measured for each latency figure.")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16],
        description="Concurrent sessions for the throughput figures.",
    )
    throughput_s: float = Field(
        5.0, gt=0, description="Seconds measured at each concurrency level."
    )
    wait_replicas: int = Field(
        0,
        ge=0,
        description="Open bench sessions asking this many Redis replicas to acknowledge each step (needs --redis-replicas).",
    )
    pinned: bool = Field(
        False,
        description="Instead: 2 stages, each shard pinned to its own core, 16 sessions, against "
        "the whole model in this process pinned to one core (key pipeline_speedup).",
    )
    failover: bool = Field(
        False,
        description="Instead: kill -9 the middle stage's leader repeatedly under load and report the time to the next FULL answer (runs at least 2 replicas per stage).",
    )
    degraded: bool = Field(
        False,
        description="Measure each serve mode instead: error and success on the reach task, "
        "latency through a cluster whose stages are killed from the last one down.",
    )
    weights_dir: Path | None = Field(
        None, description="--degraded: trained weights (`actionmesh train`); else trains first."
    )
    degraded_episodes: int = Field(
        64, ge=1, description="--degraded: held-out episodes of the quality evaluation."
    )
    failover_kills: int = Field(10, ge=1, description="Leader kills in a --failover run.")
    scale: bool = Field(
        False,
        description="Measure a fleet's cost instead: Redis round trips and bytes per session, "
        "coordinator, Redis and shard CPU per step, the memory of idle sessions, and the "
        "sizing they give (docs/sizing.md).",
    )
    scale_robots: int = Field(
        4, ge=1, description="--scale: robots stepping back to back, --steps steps each."
    )
    scale_idle_sessions: int = Field(
        10_000, ge=0, description="--scale: idle sessions opened to measure their memory."
    )
    failover_robots: int = Field(
        4, ge=1, description="Robots stepping at 50 Hz during a --failover run."
    )
    floors: bool = Field(
        False,
        description="Measure the transport floors instead: what Python gRPC and Redis round "
        "trips cost on this machine with nothing of ours around them, with the default model's "
        "message sizes, and the step overhead they add up to (keys floor_*; docs/performance.md).",
    )
    tls: bool = Field(
        False,
        description="Also measure what mutual TLS costs a step: a TLS twin of the cluster, "
        "stepped in alternating rounds with the plaintext one (keys tls_*; every other key "
        "stays the plaintext cluster's).",
    )

    @model_validator(mode="after")
    def _one_mode(self) -> typing.Self:
        modes = [
            name for name in ("failover", "degraded", "scale", "floors") if getattr(self, name)
        ]
        if len(modes) > 1:
            raise ValueError(f"choose one of {', '.join(flag_name(m) for m in modes)}")
        if self.tls and (modes or self.pinned):
            raise ValueError(
                f"--tls adds TLS figures to the latency bench; leave out "
                f"{flag_name((modes or ['pinned'])[0])} (or --tls)"
            )
        if self.scale and self.redis_url is not None:
            raise ValueError(
                "--scale measures the private Redis it starts (MONITOR, INFO, MEMORY USAGE on "
                "each server): leave out --redis-url (--redis-cluster-primaries N measures a "
                "private Redis Cluster)"
            )
        return self

    @model_validator(mode="after")
    def _replicas_to_wait_for(self) -> typing.Self:
        # A private Redis has exactly --redis-replicas replicas: asking more to acknowledge a
        # step can never be satisfied (an external --redis-url may have any number).
        if self.redis_url is None and self.wait_replicas > self.redis_replicas:
            raise ValueError(
                f"--wait-replicas {self.wait_replicas} needs at least as many "
                f"--redis-replicas (got {self.redis_replicas})"
            )
        return self


CKPT_ACTIONS = (
    "keygen",
    "create",
    "list",
    "show",
    "verify",
    "push",
    "pull",
    "promote",
    "rollback",
    "gc",
)


class CkptSettings(TlsSettings, JsonOutputSettings, EtcdSettings):
    flash_dir: Path = Field(
        Path("actionmesh-flash"),
        description="This node's local flash: versions/, CURRENT, quarantine/.",
    )
    remote: str | None = Field(
        None,
        description="Remote store: s3://bucket/prefix[?endpoint_url=...&region=...] or file:///path.",
    )
    signing_key: Path | None = signing_key_field()
    trusted_keys: list[Path] = trusted_keys_field()
    insecure: bool = Field(False, description="Accept unsigned versions and create them unsigned.")
    weights_dir: Path | None = Field(
        None, description="create: the weights to snapshot (model.json + *.safetensors)."
    )
    stages: int = stages_field("create without --weights-dir: stages of fresh weights.")
    seed: int = Field(0, description="create without --weights-dir: seed of fresh weights.")
    stage_boundaries: list[int] = stage_boundaries_field("create without --weights-dir")
    keep: int = Field(
        5, ge=1, description="gc: keep this many newest versions (and every one in use)."
    )
    grace_s: float = Field(
        3600.0,  # checkpoint.remote.DEFAULT_GRACE_S
        ge=0,
        allow_inf_nan=False,
        description="gc: delete a remote blob no kept version names only when last modified "
        "longer ago than this, so that a push in flight keeps the blobs it reuses (0: only "
        "while no push runs). create/push: warn when a push takes longer than this.",
    )
    key_dir: Path = Field(Path("."), description="keygen: where to write the key pair.")
    etcd: str | None = etcd_url_field(
        "with promote or rollback, also set the running cluster's desired version in this "
        "etcd, so that its shards and coordinators roll over to it now, without a failed step."
    )


TOKEN_ACTIONS = ("add", "list")


class TokenSettings(JsonOutputSettings):
    identities_file: Path | None = Field(
        None,
        description="The identities file to add to or list (created 0600 by the first add); "
        "default <secrets-dir>/identities.toml.",
    )
    secrets_dir: Path | None = Field(
        None, description="The mounted secrets folder whose identities.toml is meant."
    )
    identity: str = Field("", description="add: who the token proves (e.g. robot-7).")
    scopes: list[Literal["step", "admin", "checkpoint"]] = Field(
        default_factory=step_scope_only, description="add: what the token may do."
    )


CHAOS_ACTIONS = ("list", "run")


class ChaosSettings(JsonOutputSettings):
    scenario: str | None = Field(
        None, description="run: the scenario (`actionmesh chaos list` names them)."
    )
    duration: float = Field(60.0, gt=0, description="run: seconds the robots step.")
    seed: int = Field(0, description="run: seed of the fault schedule and the observations.")
    robots: int = Field(4, ge=1, description="run: simulated robots (every other one streams).")
    rate_hz: float = Field(50.0, gt=0, le=1000, description="run: each robot's control rate.")
    every_s: float = Field(10.0, gt=0, description="run, mixed: seconds between faults.")
    report: Path | None = Field(
        None, description="run: report folder (default chaos-report-<scenario>-<seed>)."
    )
    step_timeout_s: float = Field(
        0.5, gt=0, description="run: each robot's deadline per step attempt (the client's)."
    )
    wait_replicas: int = Field(
        1,
        ge=0,
        description="run: Redis replicas every other robot's steps wait for (the "
        "others wait for none): the durability levels compared.",
    )
    replicas: int = Field(2, ge=1, description="run: shard processes per stage.")
    coordinators: int = Field(2, ge=1, description="run: coordinator processes.")
    lease_ttl_s: float = Field(2.0, gt=0, description="run: stage leadership lease TTL.")
    redis_durability: Literal["none", "everysec", "always"] = Field(
        "everysec", description="run: AOF persistence of every Redis."
    )
    model_size: Literal["small", "default"] = Field(
        "small", description="run: small (quick on a laptop) or the default model size."
    )
    work_dir: Path | None = Field(
        None, description="run: keep the cluster's files (logs) here; default a temp dir."
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="run: how long each process may take to become ready."
    )


class StatusSettings(TlsSettings, JsonOutputSettings, EtcdSettings):
    etcd: str | None = etcd_url_field("the cluster's (`actionmesh up` prints it).")
    probe_timeout_s: float = Field(1.0, gt=0, description="Health check deadline per replica.")


class DrainSettings(TlsSettings, JsonOutputSettings):
    coordinator: str = Field("", description="host:port of the coordinator to drain.")
    identity: str = Field(
        "admin",
        description="With --tls-dir: whose certificate to present (<identity>.pem/.key); with "
        "--auth mtls or any on the coordinator, an identity with the admin scope.",
    )
    token_file: Path | None = Field(
        None,
        description="A file whose first line is a bearer token with the admin scope, for a "
        "coordinator with --auth token or any (never the token itself on the command line).",
    )
    grace_s: float = Field(
        0.0,
        ge=0,
        description="How long the coordinator still serves open sessions' steps (0: its "
        "drain_grace_s).",
    )
    timeout_s: float = Field(5.0, gt=0, description="Deadline of the Drain call.")


class PlanSettings(JsonOutputSettings):
    nodes: Path = Field(
        Path("nodes.yaml"),
        description="Node inventory (YAML): name, memory_gib, cpus, gflops, link_mbps, "
        "accelerators per node (see deploy/nodes.example.yaml).",
    )
    model: Path | None = Field(
        None,
        description="The model: a weights dir, its model.json, or a JSON/YAML file of model "
        "config fields (d_model, n_layers, ...); default the default model.",
    )
    stages: int | None = Field(
        None, ge=1, description="Pipeline stages to plan; default the model's n_stages."
    )
    headroom: float = Field(
        0.2, ge=0, description="Memory kept free on a node beyond a stage's need, as a fraction."
    )
    shard_overhead_mib: int = Field(
        512, ge=0, description="Memory of a shard process beyond its weights (Python, torch, gRPC)."
    )
    replicas: int = Field(
        2, ge=1, description="Most replicas per stage (a leader and standbys where memory is left)."
    )
    measure: bool = Field(
        False,
        description="Time one layer here: nodes without gflops are taken as fast as this "
        "machine, and the expected latency uses the measured time.",
    )


class ExportSettings(JsonOutputSettings):
    weights_dir: Path = Field(
        Path("actionmesh-weights"),
        description="The weights to export (model.json + *.safetensors, e.g. from `actionmesh train`).",
    )
    format: Literal["onnx", "torchscript"] = Field(
        "onnx",
        description="onnx: stage-K.onnx (+ stage-K.int8.onnx) and student.onnx, what `shard "
        "--runtime onnx|onnx-int8` serves; torchscript: stage-K.torchscript.pt and "
        "student.torchscript.pt, for libtorch.",
    )
    output_dir: Path | None = Field(
        None,
        description="Where the files go; default --weights-dir, so that `actionmesh ckpt create` "
        "snapshots them (with their sha256) into the same version.",
    )
    int8: bool = Field(
        True,
        description="onnx: also write each stage with its linear layers quantized to int8.",
    )


CERTS_ACTIONS = ("dev",)


class CertsSettings(Settings):
    out: Path = Field(
        Path("actionmesh-certs"),
        description="dev: the folder to write ca.pem, ca.key and <role>.pem / <role>.key into.",
    )
    force: bool = Field(False, description="dev: replace certificates already in --out.")
    robots: list[str] = Field(
        default_factory=lambda: ["robot-a", "robot-b"],
        description="dev: robot client identities to issue certificates for.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="dev: more SANs (IP addresses or DNS names) beyond 127.0.0.1, ::1 and "
        "localhost, e.g. the addresses shards are reached at on other hosts.",
    )

    @field_validator("robots")
    @classmethod
    def _role_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not CLUSTER_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r}: a role is 1-63 letters, digits, '.', '_' or '-' (it names files)"
                )
        return value


# `actionmesh train --quick`: a small model, trained in a minute or two, for tests and for a
# checkpoint small enough to ship; any of these given explicitly still wins.
QUICK_TRAINING: dict[str, Any] = {
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 3,
    "tokens": 8,
    "memory_tokens": 2,
    "student_hidden": 64,
    "baseline_hidden": 64,
    "memory_iterations": 300,
    "memory_learning_rate": 1e-2,
    "head_iterations": 200,
    "student_iterations": 200,
}


class TrainSettings(Settings):
    quick: bool = Field(
        False,
        description="The quick size: a small model trained in a minute or two (tests, a "
        "shippable demo checkpoint); size and budget settings given explicitly still win.",
    )
    output_dir: Path = Field(
        Path("actionmesh-weights"),
        description="Where the trained weights (model.json + *.safetensors) and the quality table go.",
    )
    seed: int = Field(0, description="Seed of the initialisation and of every training episode.")
    d_model: int = Field(256, ge=8, description="Model width.")
    n_heads: int = Field(8, ge=1, description="Attention heads per layer.")
    n_layers: int = Field(6, ge=1, description="Transformer layers, split over the stages.")
    tokens: int = Field(32, ge=1, description="Tokens per step that the observation becomes.")
    memory_tokens: int = Field(4, ge=1, description="Recurrent memory per stage, in tokens.")
    stages: int = stages_field("Pipeline stages.")
    stage_boundaries: list[int] = stage_boundaries_field("Stage split")
    student_hidden: int = Field(128, ge=8, description="GRU width of the distilled student.")
    memory_iterations: int = Field(
        450,
        ge=1,
        description="Phase (0): whole-episode updates of the stages' memory path (blocks left "
        "out); the GRU baseline gets the same.",
    )
    memory_batch_episodes: int = Field(16, ge=1, description="Episodes per phase (0) update.")
    memory_learning_rate: float = Field(5e-3, gt=0, description="Phase (0) peak learning rate.")
    exit_loss_weight: float = Field(
        0.1,
        ge=0,
        description="Phase (0): weight of each exit head's imitation loss beside the last "
        "head's 1 (deep supervision: every stage learns to answer, the last one most).",
    )
    baseline_hidden: int = Field(
        128,
        ge=8,
        description="Width of the GRU baseline trained directly on the expert; at the "
        "student's width, the student starts from it.",
    )
    baseline_learning_rate: float = Field(
        1e-2, gt=0, description="The GRU baseline's peak learning rate."
    )
    iterations: int = Field(
        0,
        ge=0,
        description="Phase (a): batches of episodes the whole model, blocks included, imitates "
        "(expensive: a step through the blocks costs some 15x one of phase (0)).",
    )
    batch_episodes: int = Field(8, ge=1, description="Episodes per training batch.")
    bptt_steps: int = Field(8, ge=1, description="Steps per truncated-backpropagation window.")
    learning_rate: float = Field(1e-3, gt=0, description="Phase (a) peak learning rate.")
    action_noise: float = Field(
        0.5,
        ge=0,
        description="Noise on executed set-points while collecting training states, in max steps.",
    )
    distill_episodes: int = Field(
        64, ge=1, description="Episodes the trained model drives, for phases (b) and (c)."
    )
    head_iterations: int = Field(300, ge=1, description="Phase (b): updates per stage head.")
    head_learning_rate: float = Field(1e-2, gt=0, description="Phase (b) learning rate.")
    student_iterations: int = Field(300, ge=1, description="Phase (c): student updates.")
    student_learning_rate: float = Field(3e-3, gt=0, description="Phase (c) learning rate.")
    eval_episodes: int = Field(64, ge=1, description="Held-out episodes in the quality table.")
    cluster_latency: bool = Field(
        True,
        description="Also measure each mode's p50 through a local cluster (private Redis, etcd, "
        "one shard per stage, stages killed one by one) into the quality table, with the "
        "latency factor the coordinator's degrade policy then uses for this version.",
    )
    cluster_latency_steps: int = Field(
        100, ge=10, description="Steps measured through the cluster per serve mode."
    )
    eval_seed: int = Field(
        1_000_000, description="Seed of the held-out episodes (training never draws from it)."
    )
    flash_dir: Path | None = Field(
        None, description="Also snapshot the weights as a checkpoint version on this flash."
    )
    signing_key: Path | None = signing_key_field()
    insecure: bool = Field(False, description="Create the checkpoint version unsigned.")

    @model_validator(mode="before")
    @classmethod
    def _quick_size(cls, data: Any) -> Any:
        """--quick fills in the quick size for every size or budget setting not given."""
        if not isinstance(data, dict):
            return data
        try:
            quick = TypeAdapter(bool).validate_python(data.get("quick", False))
        except ValidationError:
            return data  # the field's own validation says what is wrong
        return {**QUICK_TRAINING, **data} if quick else data
