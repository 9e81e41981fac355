"""What a chaos run saw, as plain data: every step attempt of every robot, every fault window,
each session's end as the robot and the store see it. The invariants are checked on this
record alone (chaos/verdicts.py), so they can be tested on synthetic records and re-checked
from a saved report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODES = ("UNSPECIFIED", "FULL", "EARLY_EXIT", "FALLBACK")  # session_pb2.ServeMode by value


@dataclass(frozen=True)
class StepRecord:
    """One attempt of one step. `sent_s` and `answered_s` are seconds after the robots
    started; `mode` is the serve mode's name ("" for a failed attempt); `ref_error` is the
    largest absolute difference from the never-failed reference replayed offline (None where
    no reference applies: a failed attempt, a FALLBACK answer, or after a state reset)."""

    robot: int
    seq: int
    sent_s: float
    answered_s: float
    code: str  # "OK" or the gRPC status name
    mode: str = ""
    model_version: str = ""
    exit_stage: int = 0
    state_reset: bool = False
    ref_error: float | None = None

    @property
    def latency_s(self) -> float:
        return self.answered_s - self.sent_s


@dataclass(frozen=True)
class FaultWindow:
    """A fault as it happened: from injection to the end of its recovery action (restart,
    SIGCONT, rollback); `ok` false when injecting or recovering failed (then `detail` says why)."""

    fault: str
    target: str
    start_s: float
    end_s: float
    detail: str = ""
    ok: bool = True


@dataclass(frozen=True)
class RobotEnd:
    """A robot's end: the steps it saw acknowledged, the seq the store holds for its session
    (None if it could not be read), the error that stopped it early ("" if none); and how it
    stepped (the Redis replicas it asked to wait for, its priority class)."""

    robot: int
    session_id: str
    wait_replicas: int
    acked: int
    stored_seq: int | None
    error: str = ""
    priority: str = "NORMAL"


@dataclass(frozen=True)
class LeaderSample:
    """One replica seen leading `stage` at `at_s`: by etcd (`source` "etcd": the stage's leader
    key names it) or by itself (`source` "self": its Info answered role leader both before and
    after the poll read the leader keys, chaos/leaders.py). `lease_id` is
    the lease it registered with; `lease_live` whether etcd still held that lease when asked,
    after the claim was seen (a lease never comes back, so True means live at `at_s` too)."""

    at_s: float
    stage: int
    replica_id: str
    lease_id: int
    source: str
    lease_live: bool


@dataclass
class RunRecord:
    scenario: str
    seed: int
    duration_s: float
    robots: int
    rate_hz: float
    step_deadline_s: float
    schedule: list[dict[str, Any]] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    ends: list[RobotEnd] = field(default_factory=list)
    leftover_processes: list[str] = field(default_factory=list)
    leaders: list[LeaderSample] = field(default_factory=list)  # polled through the run
    leader_polls: int = 0  # polls of the leader watch that reached etcd (most kept no sample)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> RunRecord:
        record = RunRecord(**{k: v for k, v in data.items() if k not in _NESTED})
        record.steps = [StepRecord(**s) for s in data.get("steps", [])]
        record.faults = [FaultWindow(**f) for f in data.get("faults", [])]
        record.ends = [RobotEnd(**e) for e in data.get("ends", [])]
        record.leaders = [LeaderSample(**x) for x in data.get("leaders", [])]
        return record

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @staticmethod
    def load(path: Path) -> RunRecord:
        return RunRecord.from_json(json.loads(path.read_text()))


_NESTED = ("steps", "faults", "ends", "leaders")
