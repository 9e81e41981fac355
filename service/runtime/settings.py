"""Settings for every process, parsed once at the edge: config file < env vars < flags.

Only this module reads the environment. Each command's settings are a frozen pydantic model;
its `--help` text comes from the field descriptions. The config file is TOML with one table per
command (`[coordinator]`, `[shard]`, `[up]`, ...), given by `--config` or `ACTIONMESH_CONFIG`.
Env vars are `ACTIONMESH_<FIELD>` (lists comma-separated).

A field that several commands share is written once: in a field group (a mixin class below,
e.g. `EtcdSettings`, `RedisSettings`, `GrpcProcessSettings`) or, where only its purpose
differs per command, by one helper (`_etcd_url`, `_grpc_port`) that fixes its default,
bounds and wording. Rules between fields are validators of the group that holds the fields.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from state.etcd_url import parse_etcd_url
from state.redis_url import checked_store_url

ENV_PREFIX = "ACTIONMESH_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# Where etcd keys live (/actionmesh/<cluster>/) unless --cluster says otherwise: one default for
# every command, so that `up`, `shard`, `coordinator`, `status` and `ckpt promote --etcd` started
# without --cluster all meet under the same keys.
DEFAULT_CLUSTER = "default"
CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
DEFAULT_STAGES = 3  # pipeline stages of fresh weights (ModelConfig's default)


class InvalidSettings(ValueError):
    """Settings that cannot be used; its message is one line naming the flags at fault."""


class Settings(BaseModel):
    """Every command's settings: frozen, unknown keys refused, and the log level."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    log_level: str = Field(
        "INFO", description="Python log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )

    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines as JSON objects (one event per line) or text; auto: JSON unless "
        "stderr is a terminal.",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(
                f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        return level


# --- shared field definitions: default, bounds and wording written once --------------------


def etcd_url_field(use: str) -> Any:
    """The `etcd` field; `use` says what this command does with it."""
    return Field(None, description=f"etcd URL (etcd://h1:2379,h2:2379): {use}")


def grpc_port_field(default: int, whose: str = "") -> Any:
    return Field(default, ge=0, le=65535, description=f"{whose}gRPC port; 0 picks a free one.")


def _grpc_workers(default: int) -> Any:
    return Field(
        default, ge=1, description="Threads serving gRPC calls (each open stream holds one)."
    )


def stages_field(use: str) -> Any:
    return Field(DEFAULT_STAGES, ge=1, description=use)


def stage_boundaries_field(use: str) -> Any:
    return Field(
        default_factory=list,
        description=f"{use}: first layer of stages 1..N-1 (e.g. 2,5), as `actionmesh plan` "
        "prints them; empty splits the layers evenly.",
    )


def trusted_keys_field() -> Any:
    return Field(
        default_factory=list,
        description="ed25519 public keys (PEM) whose checkpoint signatures are accepted.",
    )


def signing_key_field() -> Any:
    return Field(
        None, description="ed25519 private key (PEM) that signs the checkpoint versions created."
    )


# --- field groups --------------------------------------------------------------------------


class EtcdSettings(Settings):
    """Which etcd, and which cluster's keys in it: every command that reads or writes etcd."""

    etcd: str | None = etcd_url_field("where the cluster's stage replicas register.")
    cluster: str = Field(
        DEFAULT_CLUSTER,
        description="Cluster name (letters, digits, '.', '_', '-'; at most 63): etcd keys live "
        "under /actionmesh/<cluster>/.",
    )

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str) -> str:
        if not CLUSTER_NAME.fullmatch(value):
            raise ValueError(
                "a cluster name is 1-63 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit (it is part of every etcd key)"
            )
        return value

    @field_validator("etcd")
    @classmethod
    def _etcd_endpoints(cls, value: str | None) -> str | None:
        if value is not None:
            parse_etcd_url(value)  # a ValueError names what is wrong
        return value


class GrpcProcessSettings(Settings):
    """A process serving gRPC, with its ops port (/metrics, /live, /ready) beside it."""

    host: str = Field("127.0.0.1", description="Address to serve gRPC and the ops port on.")
    port: int = grpc_port_field(0)
    metrics_port: int = Field(
        0, ge=0, le=65535, description="HTTP port for /metrics, /live, /ready; 0 picks a free one."
    )
    grpc_workers: int = _grpc_workers(8)
    ready_file: Path | None = Field(
        None, description="Write the bound ports here as JSON once serving."
    )
    health_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often readiness (Redis reachable, leadership known) is checked and "
        "published to gRPC health and /ready.",
    )
    drain_delay_s: float = Field(
        0.5,
        ge=0,
        description="On SIGTERM: report NOT_SERVING (gRPC health, /ready 503) and keep serving "
        "this long, so that balancers and clients move away before new calls are refused.",
    )
    shutdown_grace_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM, after the drain delay: how long calls in flight may finish.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="Export traces over OTLP/gRPC to this collector (http://host:4317; https:// "
        "for TLS); unset: tracing is off and costs nothing.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of traces recorded when tracing is on (a caller's sampled trace is "
        "always followed).",
    )
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="Calls (open streams included) served at once; one more is refused with "
        "RESOURCE_EXHAUSTED instead of queueing for a thread. Default: --grpc-workers.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest gRPC message received or sent; a larger one is refused with "
        "RESOURCE_EXHAUSTED.",
    )
    secrets_dir: Path | None = Field(
        None,
        description="A mounted secrets folder (e.g. a Kubernetes Secret volume): files named "
        "redis-password and identities.toml are read from it, so that no secret is ever on a "
        "command line (docs/security.md).",
    )

    @model_validator(mode="after")
    def _rpcs_within_workers(self) -> typing.Self:
        # Past the worker count a call waits for a thread: the silent queueing this refuses.
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs > self.grpc_workers:
            raise ValueError(
                f"--max-concurrent-rpcs {self.max_concurrent_rpcs} must be at most "
                f"--grpc-workers {self.grpc_workers} (the rest would queue for a thread)"
            )
        return self

    def concurrent_rpcs(self) -> int:
        return self.max_concurrent_rpcs or self.grpc_workers


class TlsSettings(Settings):
    """Mutual TLS on the gRPC hops this process serves and calls (service/runtime/tls.py)."""

    tls_dir: Path | None = Field(
        None,
        description="Mutual TLS: a folder as `actionmesh certs dev` writes it (ca.pem, "
        "<role>.pem, <role>.key). gRPC servers then listen on TLS only and require a client "
        "certificate signed by ca.pem; calls to other processes and to etcd are TLS too and "
        "present this process's role certificate. Unset: plaintext.",
    )


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
    trusted_keys: list[Path] = trusted_keys_field()
    insecure: bool = Field(False, description="Accept unsigned checkpoint versions.")
    flash_keep_versions: int = Field(
        3,
        ge=1,
        description="Before pulling a version onto --flash-dir, remove all but this many newest "
        "versions from it (the version served, the one pulled and CURRENT are always kept): "
        "every promote would otherwise add a whole model copy until the disk is full.",
    )

    @model_validator(mode="after")
    def _remote_needs_flash(self) -> typing.Self:
        if self.remote is not None and self.flash_dir is None:
            raise ValueError(
                "--remote needs --flash-dir (versions are pulled onto this node's flash)"
            )
        return self


class RedisSettings(Settings):
    """The session store's connection, and how long a commit may wait for Redis replicas."""

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Session state store (rediss://... for TLS: with --tls-dir, this "
        "process's certificate and ca.pem are used).",
    )
    redis_password_file: Path | None = Field(
        None,
        description="File whose first line is the Redis AUTH password (a mounted secret; "
        "passwords are never taken on the command line).",
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

    @field_validator("redis_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        return checked_store_url(value)

    @model_validator(mode="after")
    def _wait_within_socket_timeout(self) -> typing.Self:
        # WAIT blocks the connection: past the socket timeout the client gives up on a commit
        # that may still succeed. Half leaves room for the commit's own round trips.
        if self.replica_wait_timeout_s > self.redis_timeout_s / 2:
            raise ValueError(
                f"--replica-wait-timeout-s {self.replica_wait_timeout_s} must be at most half of "
                f"--redis-timeout-s {self.redis_timeout_s}"
            )
        return self


class SessionServingSettings(Settings):
    """Coordinator settings that `up` (and demo, bench) pass on to the coordinator they start."""

    session_ttl_s: float = Field(
        60.0, gt=0, description="Default session TTL, refreshed on every step."
    )
    batch_max_size: int = Field(
        16, ge=1, description="Most steps of different sessions batched into one Forward per stage."
    )
    batch_max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a step waits for others to batch with, while another batch is in flight.",
    )


class ShardRuntimeSettings(Settings):
    """Shard settings that `up` (and demo, bench) pass on to every shard they start."""

    torch_threads: int = Field(
        1,
        ge=1,
        description="torch (or ONNX Runtime) intra-op threads per shard; several shards on one node must share its cores.",
    )
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="What runs the stage: torch, or ONNX Runtime without torch on the graph "
        "`actionmesh export --format onnx` wrote beside the weights (onnx-int8: its linear "
        "layers quantized to int8). Needs the `onnx` extra.",
    )
    lease_ttl_s: float = Field(
        2.0, gt=0, description="Stage leader lease TTL; keepalive every third of it."
    )


class JsonOutputSettings(Settings):
    json_output: bool = Field(False, description="Print one JSON object instead of text.")


# --- one model per command -----------------------------------------------------------------


def step_scope_only() -> list[Literal["step", "admin", "checkpoint"]]:
    return ["step"]


class AuthSettings(Settings):
    """Who may call the session API, and how much one identity may use (docs/security.md)."""

    auth: Literal["off", "token", "mtls", "any"] = Field(
        "off",
        description="How callers prove who they are: off (anyone; the session id is the only "
        "credential), token (a bearer token in the identities file), mtls (a client "
        "certificate), any (either). A call without an accepted proof gets UNAUTHENTICATED.",
    )
    identities_file: Path | None = Field(
        None,
        description="TOML of identities, their scopes and their tokens' SHA-256 (`actionmesh "
        "token add` writes it); default <secrets-dir>/identities.toml. Re-read when it changes.",
    )
    cert_default_scopes: list[Literal["step", "admin", "checkpoint"]] = Field(
        default_factory=step_scope_only,
        description="Scopes of a certificate identity the identities file does not list.",
    )
    sessions_per_identity: int = Field(
        64,
        ge=0,
        description="With auth on: open sessions one identity may hold; one more is refused "
        "with RESOURCE_EXHAUSTED (0: no limit).",
    )
    identity_steps_per_s: float = Field(
        200.0,
        ge=0,
        description="With auth on: steps per second one identity may send this coordinator "
        "(a token bucket of twice that burst); beyond it RESOURCE_EXHAUSTED with a retry hint "
        "(0: no limit).",
    )


class CoordinatorSettings(
    TlsSettings,
    AuthSettings,
    CheckpointSourceSettings,
    SessionServingSettings,
    RedisSettings,
    EtcdSettings,
    GrpcProcessSettings,
):
    port: int = grpc_port_field(50050)
    grpc_workers: int = _grpc_workers(64)
    etcd: str | None = etcd_url_field("stage leaders and standbys are found there.")
    stage_addresses: list[str] = Field(
        default_factory=list,
        description="Without --etcd: host:port of each stage's one shard, in stage order.",
    )
    max_session_ttl_s: float = Field(
        3600.0, gt=0, description="Upper bound on the TTL a client may ask for."
    )
    step_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Step deadline when the client sets none, and the cap on one it sets.",
    )
    drain_grace_s: float = Field(
        10.0,
        gt=0,
        description="After an admin's Drain (`actionmesh drain`) that names no grace: how long "
        "the steps of open sessions are still served (each answer telling the robot to move) "
        "before they are refused too.",
    )
    action_period_ms: float = Field(
        20.0,
        gt=0,
        description="The control period a reply's actions are spaced by, as the model was "
        "trained (sent to clients in ActionSpec.action_period_ms).",
    )
    joint_names: list[str] = Field(
        default_factory=list,
        description="The action's columns, one name per joint (ActionSpec.joint_names); "
        "empty: joint_0, joint_1, ...",
    )
    stage_timeout_s: float = Field(
        0.5,
        gt=0,
        description="Deadline of one stage call; a replica that misses it is suspected and the stage retried elsewhere.",
    )
    stage_patience_multiple: float = Field(
        6.0,
        gt=1,
        description="A stage call that takes this many times the stage's usual latency is cut "
        "and its replica suspected, so that the step can still fail over or degrade.",
    )
    stage_patience_min_s: float = Field(
        0.15,
        gt=0,
        description="Never cut a stage call sooner than this for being slow (unless the step's "
        "deadline is short): scheduling jitter is not a hung replica.",
    )
    ban_base_s: float = Field(
        0.5, gt=0, description="First ban of a suspected replica; doubles on each failure in a row."
    )
    ban_max_s: float = Field(30.0, gt=0, description="Longest ban of a suspected replica.")
    stage_connect_timeout_s: float = Field(
        30.0, gt=0, description="How long to wait at start-up for every stage to have a replica."
    )
    max_inflight_batches: int = Field(
        2,
        ge=1,
        description="Batches in the pipeline at once (stage k works on one while stage k+1 works on "
        "another); stages + 1 where each stage has cores of its own.",
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
    session_cache_size: int = Field(
        4096,
        ge=0,
        description="Sessions whose last committed record this coordinator keeps, so that their "
        "next step costs one Redis round trip, not two (about 14 KiB each; 0: off). Safe with "
        "several coordinators: a session moved on elsewhere fails the seq-conditional commit "
        "and is reloaded.",
    )
    max_observation_abs: float = Field(
        1e4,
        gt=0,
        allow_inf_nan=False,
        description="Observation values beyond +-this are refused with INVALID_ARGUMENT: far "
        "outside what a model is trained on, and huge finite inputs overflow inside it.",
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
    policy_latency_factor: float | None = Field(
        None,
        gt=0,
        description="The quality table's latencies are in-process; a mode fits the time left "
        "when its p50 x this does. Default: the ratio measured through a cluster when the "
        "version was trained (quality.json's latency_factor), else 3.",
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

    @model_validator(mode="after")
    def _consistent_limits(self) -> typing.Self:
        # Each pair below: the first can never take effect beyond the second (a stage call and
        # a step's replay are cut at the step deadline, a session's TTL at the cap, a ban at
        # the longest ban), so a larger value is a mistake, not a choice.
        pairs = [
            ("ban_base_s", "ban_max_s"),
            ("session_ttl_s", "max_session_ttl_s"),
            ("stage_timeout_s", "step_timeout_s"),
            ("catch_up_budget_s", "step_timeout_s"),
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"{flag_name(low)} {getattr(self, low)} must be at most "
                    f"{flag_name(high)} {getattr(self, high)}"
                )
        return self


class ShardSettings(
    TlsSettings, CheckpointSourceSettings, ShardRuntimeSettings, EtcdSettings, GrpcProcessSettings
):
    stage: int = Field(0, ge=0, description="Which pipeline stage this shard serves.")
    # Each coordinator keeps up to MAX_STREAMS (2) Forward streams open to each replica, each
    # holding a server thread: 32 leaves room for 15 coordinators and the odd unary call.
    grpc_workers: int = _grpc_workers(32)
    etcd: str | None = etcd_url_field("register and campaign for stage leader.")
    weights_dir: Path | None = Field(
        None,
        description="Directory with model.json and stage-K.safetensors; without it (and without --flash-dir), weights are initialised from --seed.",
    )
    n_stages: int = stages_field("Stages of the model when initialising from --seed.")
    seed: int = Field(0, description="Initialisation seed when no --weights-dir is given.")
    stage_boundaries: list[int] = stage_boundaries_field("When initialising from --seed")
    replica_id: str = Field(
        "", description="Name of this replica in logs, Info and etcd; default stage-K@host:port."
    )
    cpus: list[int] = Field(
        default_factory=list,
        description="Pin this shard to these CPU cores (comma-separated), so that shards on one "
        "node each keep a core of their own; empty: any core.",
    )
    advertise_address: str = Field(
        "",
        description="host:port others reach this shard at (registered in etcd); default --host "
        "and the bound port, or with --host 0.0.0.0 this host's one routable address. A wildcard "
        "or (with etcd on another host) loopback address is refused.",
    )


class ClusterSettings(TlsSettings, ShardRuntimeSettings, SessionServingSettings, EtcdSettings):
    stages: int = stages_field("Number of pipeline stages.")
    replicas: int = Field(
        1, ge=1, description="Shard processes per stage: one leader, the rest hot standbys."
    )
    coordinators: int = Field(
        1,
        ge=1,
        description="Coordinator processes, all serving the same sessions (give the client "
        "library every address: it fails over between them). The first listens on --port, the "
        "others on the ports after it (on free ports with --port 0).",
    )
    etcd: str | None = etcd_url_field(
        "use this etcd; without it a private single-node etcd is started."
    )
    seed: int = Field(0, description="Model initialisation seed.")
    stage_boundaries: list[int] = stage_boundaries_field("Stage split of the fresh model")
    redis_url: str | None = Field(
        None, description="Use this Redis; without it a private redis-server is started."
    )
    redis_durability: Literal["none", "everysec", "always"] = Field(
        "none",
        description="Private Redis persistence: none, AOF fsynced every second, or AOF fsynced on every write.",
    )
    redis_replicas: int = Field(
        0,
        ge=0,
        description="Replicas of the private Redis, of each primary of a private Redis Cluster "
        "(sessions may ask for WAIT on them).",
    )
    redis_cluster_primaries: int = Field(
        0,
        ge=0,
        description="Start the private Redis as a Redis Cluster of this many primaries "
        "(--redis-replicas each, --redis-durability on every node); 0: one server.",
    )
    work_dir: Path | None = Field(
        None, description="Where weights, logs and sockets go; default a temp dir removed on exit."
    )
    port: int = grpc_port_field(50050, "Coordinator ")
    host: str = Field(
        "127.0.0.1",
        description="Address the coordinator serves robots on; 0.0.0.0 exposes it beyond this "
        "machine (shards, Redis and etcd stay on loopback).",
    )
    start_timeout_s: float = Field(
        60.0, gt=0, description="How long each process may take to become ready."
    )
    tls: bool = Field(
        False,
        description="Mutual TLS on every gRPC hop: certificates from --tls-dir, or made by "
        "`actionmesh certs dev` into the work dir when none is given.",
    )
    tls_dir: Path | None = Field(
        None,
        description="With --tls: use the certificates in this folder (as `actionmesh certs dev` "
        "writes it) instead of making new ones.",
    )

    @field_validator("redis_url")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        return None if value is None else checked_store_url(value)

    @model_validator(mode="after")
    def _tls_dir_needs_tls(self) -> typing.Self:
        if self.tls_dir is not None and not self.tls:
            raise ValueError("--tls-dir is used with --tls (add --tls, or leave --tls-dir out)")
        return self

    @model_validator(mode="after")
    def _private_cluster_or_url(self) -> typing.Self:
        if self.redis_url is not None and self.redis_cluster_primaries:
            raise ValueError(
                "--redis-cluster-primaries starts a private Redis Cluster; with --redis-url "
                "leave it out (a redis+cluster:// URL points at an existing one)"
            )
        return self


S = TypeVar("S", bound=Settings)


# Flags whose name is not the field's (kept stable: scripts use them).
_FLAG_NAMES = {"json_output": "--json"}


def flag_name(name: str) -> str:
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """One flag per field; unset flags stay None so they do not override file or env values."""
    parser.add_argument(
        "--config", type=Path, default=None, help=f"TOML config file (or ${CONFIG_ENV})."
    )
    for name, field in cls.model_fields.items():
        flag = flag_name(name)
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


def _from_file(path: Path, section: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            table = tomllib.load(f).get(section, {})
    except OSError as exc:
        raise InvalidSettings(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSettings(f"config file {path} is not valid TOML: {exc}") from exc
    if not isinstance(table, dict):
        raise InvalidSettings(f"config file {path}: [{section}] must be a table")
    return table


def _problem(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{flag_name(str(error['loc'][0]))}: {message}" if error["loc"] else message


def load(
    cls: type[S],
    section: str,
    args: argparse.Namespace,
    environ: typing.Mapping[str, str] | None = None,
) -> S:
    """Merge file, env and flags (later wins) and validate.

    Raises InvalidSettings with one line, `actionmesh <section>: ...`, naming every flag at
    fault (the CLI prints it and exits 2, a usage error)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or env.get(CONFIG_ENV)
    try:
        if config_path:
            values.update(_from_file(Path(config_path), section))
    except InvalidSettings as exc:
        raise InvalidSettings(f"actionmesh {section}: {exc}") from exc
    values.update(_from_env(cls, env))
    for name, field in cls.model_fields.items():
        raw = getattr(args, name, None)
        if raw is not None:
            values[name] = _parse_text(raw, field.annotation) if isinstance(raw, str) else raw
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        line = " ".join(f"actionmesh {section}: invalid settings: {problems}".split())
        raise InvalidSettings(line) from exc
