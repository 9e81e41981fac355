"""Prometheus metrics of the coordinator and shard processes (names: actionmesh_*)."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterable
from importlib import metadata

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)

STEP_LATENCY = Histogram(
    "actionmesh_step_latency_seconds",
    "Server-side time of one step, from receipt to reply.",
    ["serve_mode"],
    buckets=_LATENCY_BUCKETS_S,
)
STAGE_CALL_LATENCY = Histogram(
    "actionmesh_stage_call_latency_seconds",
    "Coordinator-side time of one stage Forward call, transport included.",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "actionmesh_batch_size",
    "Steps of different sessions pushed through the stages together.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
STEP_ERRORS = Counter(
    "actionmesh_step_errors_total", "Steps answered with an error, by gRPC status code.", ["code"]
)
STORED_REPLIES = Counter(
    "actionmesh_stored_replies_total",
    "Retried steps answered from the stored reply, not recomputed.",
)
SHARD_FORWARD_LATENCY = Histogram(
    "actionmesh_shard_forward_latency_seconds",
    "Shard-side compute time of one Forward batch.",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
)
SHARD_FORWARD_ITEMS = Counter(
    "actionmesh_shard_forward_items_total", "Session items computed by this shard.", ["stage"]
)
SHARD_VERSION_REFUSALS = Counter(
    "actionmesh_shard_version_refusals_total",
    "Forward calls this shard refused (FAILED_PRECONDITION) because they asked for a model "
    "version it does not serve: a coordinator tried to mix versions, or routed on stale news.",
    ["stage"],
)
REPLAYED_STEPS = Counter(
    "actionmesh_replayed_steps_total",
    "Logged observations replayed to bring lagging stage states level.",
)
STATE_RESETS = Counter(
    "actionmesh_state_resets_total",
    "Sessions whose state was reset because the observation log no longer reached back.",
)
STORED_STATES_UNREADABLE = Counter(
    "actionmesh_stored_states_unreadable_total",
    "Stage states loaded from the session store that no stage could run from (undecodable, "
    "wrong shape or dtype, non-finite): treated as lost, rebuilt from the log or reset.",
    ["stage"],
)
REPLICA_SUSPECTED = Counter(
    "actionmesh_replica_suspected_total",
    "Stage calls that failed or missed their deadline; the replica was banned and the stage retried.",
    ["stage", "replica"],
)
REPLICA_BANNED = Gauge(
    "actionmesh_replica_banned",
    "1 from a replica's ban (after a suspicion) until it serves this coordinator again, else 0.",
    ["stage", "replica"],
)
SHARD_RELOADS = Counter(
    "actionmesh_shard_reloads_total",
    "Model version changes of this shard, by outcome (loaded, failed).",
    ["stage", "outcome"],
)
SHARD_RELOAD_RETRIES = Counter(
    "actionmesh_shard_reload_retries_total",
    "Attempts to load the desired model version again after it failed to load (each after a "
    "backoff: 10 s doubling up to 2 min).",
    ["stage"],
)
VERSION_SWITCHES = Counter(
    "actionmesh_session_version_switches_total",
    "Sessions moved to another model version (their state rebuilt by replay, or reset).",
)
ANSWERS = Counter(
    "actionmesh_answers_total",
    "Steps answered (committed), by serve mode and priority.",
    ["serve_mode", "priority"],
)
SHEDS = Counter(
    "actionmesh_shed_total",
    "Steps refused with RESOURCE_EXHAUSTED, by reason and priority.",
    ["reason", "priority"],
)
ADMISSION_QUEUED = Gauge(
    "actionmesh_admission_queued", "Steps waiting for an admission slot (sampled at admission)."
)
REDIS_CONNECTED = Gauge(
    "actionmesh_redis_connected",
    "1 while this coordinator's session store answered its latest readiness ping, else 0.",
)
DEGRADED_SECONDS = Counter(
    "actionmesh_degraded_seconds_total",
    "Time during which this coordinator's latest answer was degraded (EARLY_EXIT or FALLBACK).",
)


class DegradedClock:
    """Integrates "the latest answer was degraded" over time into DEGRADED_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current degraded spell's last answer came

    def answered(self, degraded: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if self._since is not None:
                DEGRADED_SECONDS.inc(now - self._since)
            self._since = now if degraded else None


AUTH_REFUSALS = Counter(
    "actionmesh_auth_refusals_total",
    "Calls refused for who made them: unauthenticated, permission_denied, rate_limited, "
    "session_limit.",
    ["reason"],
)
BUILD_INFO = Gauge(
    "actionmesh_build_info",
    "1, labelled with the running build: actionmesh version, role (coordinator, shard), "
    "Python and gRPC versions.",
    ["version", "role", "python", "grpc"],
)
MODEL_VERSION = Gauge(
    "actionmesh_model_version_info",
    "1 for each model version this process serves (a shard: its stage's version; a "
    "coordinator: every version all stages offer); a version no longer served disappears.",
    ["version"],
)
LOG_LINES_DROPPED = Counter(
    "actionmesh_log_lines_dropped_total",
    "Log lines dropped because the log sink (stderr: a file, a pipe to the log collector) "
    "stopped taking them and the lines held meanwhile filled up: steps are not held for logs.",
)
READY = Gauge(
    "actionmesh_ready",
    "1 while this process reports SERVING (gRPC health, /ready), 0 while not ready or draining.",
)
_versions_lock = threading.Lock()
_versions_shown: set[str] = set()


def publish_build_info(role: str) -> None:
    """Sets actionmesh_build_info: package version, role (coordinator, shard), Python, gRPC."""
    import grpc

    BUILD_INFO.labels(
        metadata.version("actionmesh"), role, platform.python_version(), grpc.__version__
    ).set(1)


def publish_model_versions(versions: Iterable[str]) -> None:
    """actionmesh_model_version_info is 1 for exactly `versions` from now on."""
    wanted = set(versions)
    with _versions_lock:
        for gone in _versions_shown - wanted:
            MODEL_VERSION.remove(gone)
        for version in wanted:
            MODEL_VERSION.labels(version).set(1)
        _versions_shown.clear()
        _versions_shown.update(wanted)
