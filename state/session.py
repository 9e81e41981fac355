"""Plain records of a session's durable state, shared by every store backend."""

from __future__ import annotations

import enum
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
class SessionRecord:
    """Everything a coordinator needs to serve the next step of a session."""

    session_id: SessionId
    seq: int
    model_version: str
    ttl_s: float
    client_id: str = ""
    stage_states: dict[StageIndex, StageState] = field(default_factory=dict)
    last_reply: bytes = b""


class CommitStatus(enum.Enum):
    COMMITTED = "committed"
    CONFLICT = "conflict"  # the stored seq is not the expected one: someone else committed
    GONE = "gone"  # the session expired or was closed


@dataclass(frozen=True)
class CommitOutcome:
    status: CommitStatus
    current_seq: int | None  # the seq the store held when the commit was tried; None when GONE
