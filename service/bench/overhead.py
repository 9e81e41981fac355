"""Where a step's overhead goes: the robot's round trip against in-process compute, split
into the parts the coordinator and the shards report (reply timing fields and the
`actionmesh-server-timing` trailer)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from service.coordinator.session_servicer import SERVER_TIMING_KEY
from service.proto import session_pb2

# Ask the coordinator for its side of the timing (a unary call's trailing metadata).
TIMING_METADATA = ((SERVER_TIMING_KEY, "1"),)


@dataclass(frozen=True)
class StepSample:
    """One unary step as the robot saw it, with what the coordinator said of it (ms)."""

    round_trip_ms: float
    handler_ms: float
    load_ms: float
    encode_ms: float
    commit_ms: float
    queue_ms: float
    stage_ms: tuple[float, ...]
    stage_compute_ms: tuple[float, ...]

    @classmethod
    def of(cls, round_trip_s: float, reply: session_pb2.StepReply, call: grpc.Call) -> StepSample:
        sent = dict(call.trailing_metadata() or ()).get(SERVER_TIMING_KEY, "")
        server = dict(part.split("=", 1) for part in str(sent).split(";") if "=" in part)
        timing = reply.timing
        return cls(
            round_trip_ms=round_trip_s * 1e3,
            handler_ms=float(server.get("handler_ms", 0.0)),
            load_ms=float(server.get("load_ms", 0.0)),
            encode_ms=float(server.get("encode_ms", 0.0)),
            commit_ms=float(server.get("commit_ms", 0.0)),
            queue_ms=timing.queue_ms,
            stage_ms=tuple(timing.stage_ms),
            stage_compute_ms=tuple(timing.stage_compute_ms),
        )


def _p50(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def breakdown(
    samples: Sequence[StepSample],
    inprocess_stage_s: Sequence[Sequence[float]],
    idle_stage_s: Sequence[Sequence[float]],
) -> dict[str, object]:
    """Each part's median in ms (medians of parts do not add up exactly to the median whole).

    `inprocess_stage_s[k]` holds stage k's in-process compute times, measured in the same run,
    back to back; `idle_stage_s[k]` the same after idling as long as a shard waits between
    calls. Their difference, `stage_compute_after_idle`, is the part of
    `stage_compute_beyond_inprocess` that is the weights' trip back into the CPU caches.
    """
    n_stages = len(inprocess_stage_s)
    stage_sum = [sum(s.stage_ms) for s in samples]
    other = [
        s.handler_ms - s.load_ms - s.queue_ms - total - s.encode_ms - s.commit_ms
        for s, total in zip(samples, stage_sum, strict=True)
    ]
    return {
        "robot_coordinator_hop": _p50([s.round_trip_ms - s.handler_ms for s in samples]),
        "redis_load": _p50([s.load_ms for s in samples]),
        "batching_wait": _p50([s.queue_ms for s in samples]),
        "stage_transport": [
            _p50([s.stage_ms[k] - s.stage_compute_ms[k] for s in samples]) for k in range(n_stages)
        ],
        "stage_compute_beyond_inprocess": [
            round(
                _p50([s.stage_compute_ms[k] for s in samples])
                - _p50([t * 1e3 for t in inprocess_stage_s[k]]),
                3,
            )
            for k in range(n_stages)
        ],
        "stage_compute_after_idle": [
            round(_p50([t * 1e3 for t in idle]) - _p50([t * 1e3 for t in hot]), 3)
            for idle, hot in zip(idle_stage_s, inprocess_stage_s, strict=True)
        ],
        "reply_encode": _p50([s.encode_ms for s in samples]),
        "redis_commit": _p50([s.commit_ms for s in samples]),
        "coordinator_other": _p50(other),
    }
