"""Session records and commits for the store tests: small, binary-safe, distinct per seq."""

from __future__ import annotations

import secrets

from state.session import CommitStatus, SessionId, SessionRecord, StageIndex, StageState, StepCommit
from state.store import SessionStore


def new_id() -> SessionId:
    return SessionId(secrets.token_hex(8))


def fresh_record(session_id: SessionId, ttl_s: float = 10.0) -> SessionRecord:
    stages = {StageIndex(k): StageState(seq=0, data=b"") for k in range(3)}
    return SessionRecord(session_id, 0, "v1", ttl_s, client_id="robot-7", stage_states=stages)


def stages_at(seq: int) -> dict[StageIndex, StageState]:
    """Binary stage data, NUL and high bytes included, distinct per stage and seq."""
    return {StageIndex(k): StageState(seq, bytes([0, 255, k, seq]) * 3) for k in range(3)}


def step(
    expected: int, new: int, states: dict[StageIndex, StageState], reply: bytes, ttl_s: float
) -> StepCommit:
    return StepCommit(expected, new, states, reply, ttl_s, n_stages=3)


def logged(store: SessionStore, sid: SessionId, steps: int, limit: int) -> None:
    """Steps 1..steps committed, each logging `obs<seq>`, the log kept to `limit`."""
    for seq in range(1, steps + 1):
        commit = StepCommit(
            seq - 1, seq, stages_at(seq), b"r", 10.0, 3, f"obs{seq}".encode(), limit
        )
        assert store.commit(sid, commit).status is CommitStatus.COMMITTED
