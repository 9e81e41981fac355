"""The step contract: validate, load, batch through the stages, commit on seq, reply.

Knows no gRPC: the servicer maps its exceptions (service.errors) to status codes.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from service import tensor_codec
from service.coordinator import replies
from service.coordinator.batcher import Batched, DynamicBatcher
from service.coordinator.pipeline import PipelineInput, PipelineOutput
from service.coordinator.replay import level_states, rebuild_states
from service.coordinator.versions import VersionCatalog
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    SeqConflict,
    SessionNotFound,
    Unavailable,
)
from service.metrics import REPLAYED_STEPS, STATE_RESETS, STORED_REPLIES, VERSION_SWITCHES
from service.model.config import ModelConfig
from state.session import (
    CommitStatus,
    SessionId,
    SessionRecord,
    StageIndex,
    StageState,
    StepCommit,
)
from state.store import SessionStore, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedSession:
    session_id: str
    ttl_s: float
    model_version: str
    wait_replicas: int


@dataclass(frozen=True)
class Durability:
    """How sessions that ask for replica acknowledgement are served."""

    max_wait_replicas: int
    wait_timeout_s: float


@dataclass(frozen=True)
class SessionSummary:
    record: SessionRecord
    ttl_left_s: float
    log_depth: int


@dataclass(frozen=True)
class StepAnswer:
    reply: bytes  # a serialized actionmesh.v1.StepReply
    serve_mode: str
    recomputed: bool


class SessionEngine:
    def __init__(
        self,
        store: SessionStore,
        batcher: DynamicBatcher[PipelineInput, PipelineOutput],
        model: ModelConfig,
        versions: VersionCatalog,
        default_ttl_s: float,
        max_ttl_s: float,
        log_depth: int,
        durability: Durability,
    ) -> None:
        self.store, self.batcher, self.model, self.versions = store, batcher, model, versions
        self.default_ttl_s, self.max_ttl_s, self.log_depth = default_ttl_s, max_ttl_s, log_depth
        self.durability = durability

    def open(self, ttl_s: float, client_id: str, wait_replicas: int) -> OpenedSession:
        if not (ttl_s >= 0 and math.isfinite(ttl_s)):
            raise InvalidInput(f"ttl_s must be a finite number >= 0 (0: the default), got {ttl_s}")
        if wait_replicas > self.durability.max_wait_replicas:
            raise InvalidInput(
                f"wait_replicas {wait_replicas} exceeds this coordinator's max_wait_replicas "
                f"{self.durability.max_wait_replicas}"
            )
        ttl = min(ttl_s or self.default_ttl_s, self.max_ttl_s)
        version = self.versions.for_session(None)
        if version is None:
            raise Unavailable("no model version is served by every stage; retry shortly")
        session_id = SessionId(secrets.token_urlsafe(18))
        record = SessionRecord(session_id, 0, version, ttl, client_id, wait_replicas=wait_replicas)
        with _store_errors():
            self.store.create(record)
            if wait_replicas:  # a session that asks for replicas must itself survive a failover
                self.store.confirm_replicated(
                    session_id, wait_replicas, self.durability.wait_timeout_s
                )
        log.info(
            "session=%s opened client=%r ttl=%.1fs wait_replicas=%d",
            session_id,
            client_id,
            ttl,
            wait_replicas,
        )
        return OpenedSession(session_id, ttl, version, wait_replicas)

    def get(self, session_id: str) -> SessionSummary:
        with _store_errors():
            record = self.store.load(SessionId(session_id))
            ttl_left = self.store.ttl_left_s(SessionId(session_id))
            log_depth = self.store.log_depth(SessionId(session_id))
        if record is None or ttl_left is None:
            raise _not_found(session_id)
        return SessionSummary(record, ttl_left, log_depth)

    def close(self, session_id: str) -> bool:
        with _store_errors():
            closed = self.store.delete(SessionId(session_id))
        log.info("session=%s closed existed=%s", session_id, closed)
        return closed

    def check_observation(self, observation: torch.Tensor) -> None:
        want = [self.model.observation_dim]
        if observation.dtype != torch.float32:
            raise InvalidInput(
                f"observation dtype must be float32, got {str(observation.dtype).removeprefix('torch.')}"
            )
        if list(observation.shape) != want:
            raise InvalidInput(f"observation shape must be {want}, got {list(observation.shape)}")
        if not bool(torch.isfinite(observation).all()):
            bad = (~torch.isfinite(observation)).nonzero().flatten().tolist()
            raise InvalidInput(f"observation has NaN or Inf at index {bad}")

    def step(
        self,
        session_id: str,
        seq: int,
        observation: torch.Tensor,
        timestamp_s: float,
        deadline: float,
    ) -> StepAnswer:
        received = time.perf_counter()
        self.check_observation(observation)
        sid = SessionId(session_id)
        with _store_errors():
            record = self.store.load(sid)
        if record is None:
            raise _not_found(session_id)
        if seq == record.seq and record.last_reply:
            return self._stored_reply(record, record.last_reply)
        if seq != record.seq + 1:
            raise SeqConflict(session_id, record.seq, seq)
        version = self.versions.for_session(record.model_version if record.seq else None)
        if version is None:
            raise Unavailable(
                f"session={session_id}: no stage pipeline of model {record.model_version} is "
                "whole and no other version may take over; the session was not advanced, retry "
                "the same seq"
            )

        def replay_step(s: int, obs: torch.Tensor, states: list[bytes]) -> list[bytes]:
            return self._compute(
                PipelineInput(session_id, s, obs, states, deadline, version), deadline
            ).value.states

        switching = record.seq > 0 and version != record.model_version
        with _store_errors():
            if switching:
                level = rebuild_states(
                    record, self.model.n_stages, self.store, replay_step, self.log_depth
                )
            else:
                level = level_states(record, self.model.n_stages, self.store, replay_step)
        done = self._compute(
            PipelineInput(session_id, seq, observation, level.states, deadline, version), deadline
        )
        output = done.value
        outcome = replies.StepOutcome(
            session_id=session_id,
            seq=seq,
            action=output.action,
            serve_mode="FULL",
            confidence=1.0,
            model_version=version,
            queue_ms=done.queue_s * 1e3,
            stages_ms=sum(output.stage_ms),
            total_ms=(time.perf_counter() - received) * 1e3,
            stage_ms=output.stage_ms,
            observation_timestamp_s=timestamp_s,
            batch_size=done.batch_size,
            replayed_steps=level.replayed_steps,
            state_reset=level.reset,
        )
        reply = replies.encode(outcome)
        commit = StepCommit(
            expected_seq=record.seq,
            new_seq=seq,
            stage_states={StageIndex(k): StageState(seq, d) for k, d in enumerate(output.states)},
            last_reply=reply,
            ttl_s=record.ttl_s,
            n_stages=self.model.n_stages,
            observation=tensor_codec.to_bytes(observation),
            log_limit=self.log_depth,
            wait_replicas=record.wait_replicas,
            wait_timeout_s=self.durability.wait_timeout_s,
            model_version=version if version != record.model_version else "",
        )
        answer = self._commit(record, commit)
        if answer.recomputed:  # counted once the step is committed, not per attempt
            REPLAYED_STEPS.inc(level.replayed_steps)
            STATE_RESETS.inc(level.reset)
            if switching:
                VERSION_SWITCHES.inc()
                log.info(
                    "session=%s seq=%d moved from model %s to %s (replayed %d steps, reset=%s)",
                    session_id,
                    seq,
                    record.model_version,
                    version,
                    level.replayed_steps,
                    level.reset,
                )
        return answer

    def _stored_reply(self, record: SessionRecord, reply: bytes) -> StepAnswer:
        """An earlier answer, acknowledged only once it is as durable as the session asked."""
        if record.wait_replicas:
            with _store_errors():
                self.store.confirm_replicated(
                    record.session_id, record.wait_replicas, self.durability.wait_timeout_s
                )
        STORED_REPLIES.inc()
        return StepAnswer(reply, "FULL", recomputed=False)

    def _compute(self, item: PipelineInput, deadline: float) -> Batched[PipelineOutput]:
        future = self.batcher.submit(item)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout as exc:
            future.cancel()  # still queued: keep it out of a batch (it no longer counts)
            raise DeadlineExceeded(
                f"session={item.session_id} seq={item.seq}: not computed before the deadline; "
                "the session was not advanced, retry the same seq"
            ) from exc

    def _commit(self, record: SessionRecord, commit: StepCommit) -> StepAnswer:
        seq = commit.new_seq
        with _store_errors():
            outcome = self.store.commit(record.session_id, commit)
        if outcome.status is CommitStatus.COMMITTED:
            return StepAnswer(commit.last_reply, "FULL", recomputed=True)
        if outcome.status is CommitStatus.GONE:
            raise _not_found(record.session_id)
        with _store_errors():
            current = self.store.load(record.session_id)
        if current is not None and current.seq == seq:  # committed by another coordinator, or
            # by our own retried commit whose answer was lost
            log.info(
                "session=%s seq=%d lost the commit race; returning the stored reply",
                record.session_id,
                seq,
            )
            return self._stored_reply(current, current.last_reply)
        raise SeqConflict(record.session_id, outcome.current_seq or 0, seq)


def _not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(
        f"session={session_id} not found: unknown, closed, or expired (a session expires when no "
        "step arrives within its TTL); open a new session"
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """Turns an unreachable store into Unavailable: the step was not advanced."""
    try:
        yield
    except StoreUnavailable as exc:
        raise Unavailable(f"session store unavailable: {exc}; retry the same seq") from exc
