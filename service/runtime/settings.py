"""Settings for every process, parsed once at the edge: config file < env vars < flags.

Only this module reads the environment. Each command's settings are a frozen pydantic model;
its `--help` text comes from the field descriptions. The config file is TOML with one table per
command (`[coordinator]`, `[shard]`, `[up]`, ...), given by `--config` or `ACTIONMESH_CONFIG`.
Env vars are `ACTIONMESH_<FIELD>` (lists comma-separated).
"""

from __future__ import annotations

import argparse
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "ACTIONMESH_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CheckpointSourceSettings(Settings):
    """Where a process loads versioned weights from (a shard its stage, a coordinator each
    version's student and quality table)."""

    flash_dir: Path | None = Field(
        None,
        description="Load weights from this node's checkpoint flash: verified on every load, bad "
        "versions quarantined, missing ones pulled from --remote.",
    )
    remote: str | None = Field(
        None,
        description="With --flash-dir: where versions are pulled from (s3://... or file://...); "
        "its CURRENT is what a shard serves at start.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="ed25519 public keys (PEM) whose checkpoint signatures are accepted.",
    )
    insecure: bool = Field(False, description="Accept unsigned checkpoint versions.")


class CoordinatorSettings(CheckpointSourceSettings):
    host: str = Field("127.0.0.1", description="Address to serve the session API on.")
    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="HTTP port for /metrics, /live, /ready; 0 picks a free one."
    )
    etcd: str | None = Field(
        None,
        description="etcd URL (etcd://h1:2379,h2:2379): stage leaders and standbys are found there.",
    )
    cluster: str = Field(
        "default", description="Cluster name: etcd keys live under /actionmesh/<cluster>/."
    )
    stage_addresses: list[str] = Field(
        default_factory=list,
        description="Without --etcd: host:port of each stage's one shard, in stage order.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Session state store.")
    session_ttl_s: float = Field(
        60.0, gt=0, description="Default session TTL, refreshed on every step."
    )
    max_session_ttl_s: float = Field(
        3600.0, gt=0, description="Upper bound on the TTL a client may ask for."
    )
    step_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Step deadline when the client sets none, and the cap on one it sets.",
    )
    stage_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Deadline of one stage call; a replica that misses it is suspected and the stage retried elsewhere.",
    )
    ban_base_s: float = Field(
        0.5, gt=0, description="First ban of a suspected replica; doubles on each failure in a row."
    )
    ban_max_s: float = Field(30.0, gt=0, description="Longest ban of a suspected replica.")
    stage_connect_timeout_s: float = Field(
        30.0, gt=0, description="How long to wait at start-up for every stage to have a replica."
    )
    batch_max_size: int = Field(
        16, ge=1, description="Most steps of different sessions batched into one Forward per stage."
    )
    batch_max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a step waits for others to batch with, while another batch is in flight.",
    )
    max_inflight_batches: int = Field(
        2,
        ge=1,
        description="Batches in the pipeline at once (stage k works on one while stage k+1 works on another).",
    )
    observation_log_depth: int = Field(
        64,
        ge=0,
        description="Observations kept per session for replay; lag beyond it resets the state.",
    )
    catch_up_budget_s: float = Field(
        0.1,
        gt=0,
        description="Replay time one step may spend bringing lagging stages level; a longer lag "
        "is caught up over several steps, each answered degraded meanwhile.",
    )
    max_observation_bytes: int = Field(
        65536, ge=1, description="Larger observations are refused with INVALID_ARGUMENT."
    )
    redis_timeout_s: float = Field(1.0, gt=0, description="Socket timeout of each Redis call.")
    replica_wait_timeout_s: float = Field(
        0.4,
        gt=0,
        description="For sessions opened with wait_replicas: how long a commit waits for replicas (at most half of redis_timeout_s).",
    )
    max_wait_replicas: int = Field(
        2, ge=0, description="The most Redis replicas a session may ask to acknowledge its steps."
    )
    grpc_workers: int = Field(
        64, ge=1, description="Threads serving gRPC calls (each open stream holds one)."
    )
    ready_file: Path | None = Field(
        None, description="Write the bound ports here as JSON once serving."
    )
    weights_dir: Path | None = Field(
        None,
        description="The distilled student (and quality.json) for FALLBACK answers, for the "
        "version these weights are; or use --flash-dir for every version.",
    )
    early_exit_max_error_ratio: float = Field(
        1.3, gt=0, description="An exit head answers only if its error is at most this x FULL's."
    )
    fallback_max_error_ratio: float = Field(
        1.5, gt=0, description="The student answers only if its error is at most this x FULL's."
    )
    policy_latency_factor: float = Field(
        3.0,
        gt=0,
        description="The quality table's latencies are in-process; a mode fits the time left "
        "when its p50 x this does (a cluster step costs about 2-3x the in-process one).",
    )
    admission_max_inflight: int = Field(
        32, ge=1, description="Steps served at once; more wait in the admission queue."
    )
    admission_max_queue: int = Field(
        64,
        ge=0,
        description="Steps waiting for a slot; beyond it BEST_EFFORT, then NORMAL steps are shed "
        "(SAFETY is never shed while it can be served in time).",
    )


class ShardSettings(CheckpointSourceSettings):
    stage: int = Field(0, ge=0, description="Which pipeline stage this shard serves.")
    host: str = Field("127.0.0.1", description="Address to serve StageService on.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="HTTP port for /metrics, /live, /ready; 0 picks a free one."
    )
    weights_dir: Path | None = Field(
        None,
        description="Directory with model.json and stage-K.safetensors; without it (and without --flash-dir), weights are initialised from --seed.",
    )
    n_stages: int = Field(3, ge=1, description="Stages of the model when initialising from --seed.")
    seed: int = Field(0, description="Initialisation seed when no --weights-dir is given.")
    torch_threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads; several shards on one node must share its cores.",
    )
    replica_id: str = Field(
        "", description="Name of this replica in logs, Info and etcd; default stage-K@host:port."
    )
    etcd: str | None = Field(
        None,
        description="etcd URL (etcd://h1:2379,h2:2379): register and campaign for stage leader.",
    )
    cluster: str = Field(
        "default", description="Cluster name: etcd keys live under /actionmesh/<cluster>/."
    )
    lease_ttl_s: float = Field(
        2.0, gt=0, description="Leader lease TTL; keepalive every third of it."
    )
    advertise_address: str = Field(
        "", description="host:port others reach this shard at; default host and the bound port."
    )
    grpc_workers: int = Field(8, ge=1, description="Threads serving gRPC calls.")
    ready_file: Path | None = Field(
        None, description="Write the bound ports here as JSON once serving."
    )


class ClusterSettings(Settings):
    stages: int = Field(3, ge=1, description="Number of pipeline stages.")
    replicas: int = Field(
        1, ge=1, description="Shard processes per stage: one leader, the rest hot standbys."
    )
    etcd: str | None = Field(
        None, description="Use this etcd; without it a private single-node etcd is started."
    )
    cluster: str = Field(
        "local", description="Cluster name: etcd keys live under /actionmesh/<cluster>/."
    )
    lease_ttl_s: float = Field(2.0, gt=0, description="Stage leader lease TTL.")
    seed: int = Field(0, description="Model initialisation seed.")
    redis_url: str | None = Field(
        None, description="Use this Redis; without it a private redis-server is started."
    )
    redis_durability: Literal["none", "everysec", "always"] = Field(
        "none",
        description="Private Redis persistence: none, AOF fsynced every second, or AOF fsynced on every write.",
    )
    redis_replicas: int = Field(
        0, ge=0, description="Replicas of the private Redis (sessions may ask for WAIT on them)."
    )
    work_dir: Path | None = Field(
        None, description="Where weights, logs and sockets go; default a temp dir removed on exit."
    )
    port: int = Field(
        50050, ge=0, le=65535, description="Coordinator gRPC port; 0 picks a free one."
    )
    torch_threads: int = Field(1, ge=1, description="torch threads per shard.")
    batch_max_size: int = Field(16, ge=1, description="Coordinator batch size limit.")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="Coordinator batching wait.")
    session_ttl_s: float = Field(60.0, gt=0, description="Default session TTL.")
    start_timeout_s: float = Field(
        60.0, gt=0, description="How long each process may take to become ready."
    )


class DemoSettings(ClusterSettings):
    port: int = Field(0, ge=0, le=65535, description="Coordinator gRPC port; 0 picks a free one.")
    duration_s: float = Field(20.0, gt=0, description="How long the simulated robot runs.")
    rate_hz: float = Field(50.0, gt=0, description="Control rate of the simulated robot.")
    print_every: int = Field(10, ge=1, description="Print one table row every N steps.")


class BenchSettings(ClusterSettings):
    port: int = Field(0, ge=0, le=65535, description="Coordinator gRPC port; 0 picks a free one.")
    steps: int = Field(200, ge=10, description="Sequential steps measured for each latency figure.")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16],
        description="Concurrent sessions for the throughput figures.",
    )
    throughput_s: float = Field(
        5.0, gt=0, description="Seconds measured at each concurrency level."
    )
    json_output: bool = Field(False, description="Print one JSON object instead of a table.")
    wait_replicas: int = Field(
        0,
        ge=0,
        description="Open bench sessions asking this many Redis replicas to acknowledge each step (needs --redis-replicas).",
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
    failover_robots: int = Field(
        4, ge=1, description="Robots stepping at 50 Hz during a --failover run."
    )


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


class CkptSettings(Settings):
    flash_dir: Path = Field(
        Path("actionmesh-flash"),
        description="This node's local flash: versions/, CURRENT, quarantine/.",
    )
    remote: str | None = Field(
        None,
        description="Remote store: s3://bucket/prefix[?endpoint_url=...&region=...] or file:///path.",
    )
    signing_key: Path | None = Field(
        None, description="ed25519 private key (PEM) that signs created versions."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="ed25519 public keys (PEM) whose signatures are accepted."
    )
    insecure: bool = Field(False, description="Accept unsigned versions and create them unsigned.")
    weights_dir: Path | None = Field(
        None, description="create: the weights to snapshot (model.json + *.safetensors)."
    )
    stages: int = Field(
        3, ge=1, description="create without --weights-dir: stages of fresh weights."
    )
    seed: int = Field(0, description="create without --weights-dir: seed of fresh weights.")
    keep: int = Field(
        5, ge=1, description="gc: keep this many newest versions (and every one in use)."
    )
    key_dir: Path = Field(Path("."), description="keygen: where to write the key pair.")
    etcd: str | None = Field(
        None,
        description="promote/rollback: also set the running cluster's desired version in this "
        "etcd, so that its shards and coordinators roll over to it now, without a failed step.",
    )
    cluster: str = Field(
        "local", description="Cluster name: etcd keys live under /actionmesh/<cluster>/."
    )
    json_output: bool = Field(False, description="Print one JSON object instead of text.")


class StatusSettings(Settings):
    etcd: str | None = Field(
        None, description="etcd URL of the cluster (`actionmesh up` prints it)."
    )
    cluster: str = Field(
        "local", description="Cluster name: etcd keys live under /actionmesh/<cluster>/."
    )
    probe_timeout_s: float = Field(1.0, gt=0, description="Health check deadline per replica.")
    json_output: bool = Field(False, description="Print one JSON object instead of a table.")


S = TypeVar("S", bound=Settings)


# Flags whose name is not the field's (kept stable: scripts use them).
_FLAG_NAMES = {"json_output": "--json"}


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """One flag per field; unset flags stay None so they do not override file or env values."""
    parser.add_argument(
        "--config", type=Path, default=None, help=f"TOML config file (or ${CONFIG_ENV})."
    )
    for name, field in cls.model_fields.items():
        flag = _flag(name)
        default = field.get_default(call_default_factory=True)
        help_text = (
            f"{field.description or ''} (default: {default}; env {ENV_PREFIX}{name.upper()})"
        )
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)


def _from_env(cls: type[Settings], environ: typing.Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _parse_text(raw, field.annotation)
    return values


def _parse_text(raw: str, annotation: Any) -> Any:
    return (
        [part.strip() for part in raw.split(",") if part.strip()] if _is_list(annotation) else raw
    )


def load(
    cls: type[S],
    section: str,
    args: argparse.Namespace,
    environ: typing.Mapping[str, str] | None = None,
) -> S:
    """Merge file, env and flags (later wins) and validate; SystemExit with a readable message."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or env.get(CONFIG_ENV)
    if config_path:
        with Path(config_path).open("rb") as f:
            values.update(tomllib.load(f).get(section, {}))
    values.update(_from_env(cls, env))
    for name, field in cls.model_fields.items():
        raw = getattr(args, name, None)
        if raw is not None:
            values[name] = _parse_text(raw, field.annotation) if isinstance(raw, str) else raw
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_flag(str(e['loc'][0])) if e['loc'] else section}: {e['msg']}" for e in exc.errors()
        )
        raise SystemExit(f"actionmesh {section}: invalid settings: {problems}") from exc


class TrainSettings(Settings):
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
    stages: int = Field(3, ge=1, description="Pipeline stages.")
    student_hidden: int = Field(128, ge=8, description="GRU width of the distilled student.")
    iterations: int = Field(
        30, ge=1, description="Phase (a): batches of episodes the full model imitates."
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
        128, ge=1, description="Episodes the trained model drives, for phases (b) and (c)."
    )
    head_iterations: int = Field(300, ge=1, description="Phase (b): updates per stage head.")
    head_learning_rate: float = Field(1e-2, gt=0, description="Phase (b) learning rate.")
    student_iterations: int = Field(300, ge=1, description="Phase (c): student updates.")
    student_learning_rate: float = Field(3e-3, gt=0, description="Phase (c) learning rate.")
    eval_episodes: int = Field(64, ge=1, description="Held-out episodes in the quality table.")
    eval_seed: int = Field(
        1_000_000, description="Seed of the held-out episodes (training never draws from it)."
    )
    flash_dir: Path | None = Field(
        None, description="Also snapshot the weights as a checkpoint version on this flash."
    )
    signing_key: Path | None = Field(
        None, description="ed25519 private key (PEM) that signs the checkpoint version."
    )
    insecure: bool = Field(False, description="Create the checkpoint version unsigned.")
