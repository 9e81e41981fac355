"""Plain records of a session's durable state, shared by every store backend."""

from __future__ import annotations

import dataclasses
import enum
import struct
from dataclasses import dataclass, field
from typing import NewType

SessionId = NewType("SessionId", str)
StageIndex = NewType("StageIndex", int)


@dataclass(frozen=True)
class StageState:
    """One stage's recurrent state, tagged with the seq of the last step it reflects.

    `data` is opaque to the store (an encoded tensor); seq 0 with empty data means "fresh".
    """

    seq: int
    data: bytes


@dataclass(frozen=True)
class Anchor:
    """Every stage's state at `seq`, the last step at which all stages were level.

    Kept while some stage lags: replay starts here, since a lagging stage's inputs are the
    earlier stages' outputs at the missed steps, which only a run from a level point gives.
    Stages without an entry were fresh at `seq`.
    """

    seq: int
    states: dict[StageIndex, bytes]


@dataclass(frozen=True)
class SwitchProgress:
    """A session's states being rebuilt on another model version by replaying its observation
    log, kept between steps so that a version switch is caught up over several steps (each
    within its own deadline) while the session goes on answering from its current version.

    `states` reflect steps up to `seq` on `version` (stages without an entry are fresh);
    `exact` is False when the log did not reach back to seq 1 when the rebuild began (the
    history before it is lost, and the switching reply says `state_reset`).
    """

    version: str
    seq: int
    states: dict[StageIndex, bytes]
    exact: bool

    def encode(self) -> bytes:
        """One opaque value for the store: a header, then each stage's index, length, bytes."""
        version = self.version.encode()
        parts = [struct.pack(">HqB", len(version), self.seq, self.exact), version]
        for k, data in sorted(self.states.items()):
            parts.append(struct.pack(">HI", k, len(data)) + data)
        return b"".join(parts)

    @classmethod
    def decode(cls, blob: bytes) -> SwitchProgress:
        n_version, seq, exact = struct.unpack_from(">HqB", blob)
        at = struct.calcsize(">HqB")
        version = blob[at : at + n_version].decode()
        at += n_version
        states: dict[StageIndex, bytes] = {}
        while at < len(blob):
            k, size = struct.unpack_from(">HI", blob, at)
            at += struct.calcsize(">HI")
            states[StageIndex(k)] = blob[at : at + size]
            at += size
        return cls(version, seq, states, bool(exact))


@dataclass(frozen=True)
class SessionRecord:
    """Everything a coordinator needs to serve the next step of a session."""

    session_id: SessionId
    seq: int
    model_version: str
    ttl_s: float
    client_id: str = ""
    stage_states: dict[StageIndex, StageState] = field(default_factory=dict)
    last_reply: bytes = b""
    anchor: Anchor | None = None
    # The distilled student's own state, kept while it answers (FALLBACK); None when cold.
    student: StageState | None = None
    # Replicas that must acknowledge each commit before the step is answered (Redis WAIT);
    # 0: the primary's word is enough (a failover may lose the last acknowledged steps).
    wait_replicas: int = 0
    switch: SwitchProgress | None = None  # a version switch under way
    # The revision at which the coordinator that last moved the session to another version
    # saw the desired version (0: never moved by one); no coordinator with an older view moves
    # it again (routing/version_choice.py).
    version_revision: int = 0

    def stages(self, n_stages: int) -> list[StageState]:
        """Stage 0..n_stages-1's states, a fresh one (seq 0, no data) where none is stored."""
        return [self.stage_states.get(StageIndex(k), StageState(0, b"")) for k in range(n_stages)]


@dataclass(frozen=True)
class StepCommit:
    """What one step writes, all at once, if the session is still at expected_seq."""

    expected_seq: int
    new_seq: int
    stage_states: dict[StageIndex, StageState]  # the stages this step advanced; others keep theirs
    last_reply: bytes
    ttl_s: float
    n_stages: int  # so the store can tell whether every stage is level after the commit
    observation: bytes = b""  # logged under new_seq, for replay
    log_limit: int = 0  # keep at most this many observations; 0 keeps no log
    wait_replicas: int = 0  # the session's SessionRecord.wait_replicas
    wait_timeout_s: float = 0.5  # how long to wait for them before NotReplicated
    model_version: str = ""  # the version this step ran on, when it moved the session; "" keeps it
    student: StageState | None = None  # the student's new state, when it answered
    # Replay progress while some stage still lags: every stage's state at a later level point,
    # so that the next replay starts there (ignored if this commit levels every stage).
    anchor: Anchor | None = None
    # A version switch's progress to keep (dropped by any commit that moves model_version).
    switch: SwitchProgress | None = None
    version_revision: int = 0  # with model_version: SessionRecord.version_revision


class CommitStatus(enum.Enum):
    COMMITTED = "committed"
    CONFLICT = "conflict"  # the stored seq is not the expected one: someone else committed
    GONE = "gone"  # the session expired or was closed


@dataclass(frozen=True)
class CommitOutcome:
    status: CommitStatus
    current_seq: int | None  # the seq the store held when the commit was tried; None when GONE


def committed(record: SessionRecord, step: StepCommit) -> SessionRecord:
    """The record after `step`, as COMMIT_LUA computes it (the memory store and the
    coordinator's session cache apply commits with it)."""
    was_level = all(s.seq == step.expected_seq for s in record.stages(step.n_stages))
    level_after = all(StageIndex(k) in step.stage_states for k in range(step.n_stages))
    anchor = record.anchor
    if was_level and not level_after:
        anchor = Anchor(step.expected_seq, {k: s.data for k, s in record.stage_states.items()})
    elif level_after:
        anchor = None
    if step.anchor is not None and not level_after:
        anchor = step.anchor
    moved = bool(step.model_version)
    return dataclasses.replace(
        record,
        seq=step.new_seq,
        last_reply=step.last_reply,
        stage_states={**record.stage_states, **step.stage_states},
        anchor=anchor,
        model_version=step.model_version if moved else record.model_version,
        student=step.student if step.student is not None else record.student,
        ttl_s=record.ttl_s,
        switch=step.switch if step.switch is not None else None if moved else record.switch,
        version_revision=step.version_revision if moved else record.version_revision,
    )
