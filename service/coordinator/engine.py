"""The step contract: validate, load, batch through the stages, commit on seq, reply.

Knows no gRPC: the servicer maps its exceptions (service.coordinator.step_errors) to status codes.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fallback.policy import Verdict, best_latency_s
from fallback.priority import Priority
from service.coordinator import replies
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets, VersionAssets
from service.coordinator.degrade import choose_mode
from service.coordinator.replay import LevelStates
from service.coordinator.routing.versions import VersionCatalog
from service.coordinator.serve_modes import (
    Computed,
    Lagging,
    ServeModes,
    StepInput,
    store_errors,
)
from service.coordinator.step_errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    SeqConflict,
    SessionNotFound,
    Unavailable,
)
from service.proto import session_pb2, tensor_codec
from service.runtime.metrics import (
    ANSWERS,
    REPLAYED_STEPS,
    SHEDS,
    STATE_RESETS,
    STORED_REPLIES,
    VERSION_SWITCHES,
    DegradedClock,
)
from state.session import (
    CommitStatus,
    SessionId,
    SessionRecord,
    StepCommit,
)
from state.store import SessionStore

log = logging.getLogger(__name__)

SHED_RETRY_AFTER_S = 0.5  # a shed step's retry hint when nothing can serve it now


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


# Stage health per stage of a model version (StageRouter.healthy).
Health = Callable[[str, int], list[bool]]


class SessionEngine:
    def __init__(
        self,
        store: SessionStore,
        modes: ServeModes,
        versions: VersionCatalog,
        assets: ModelAssets,
        health: Health,
        admission: AdmissionGate,
        default_ttl_s: float,
        max_ttl_s: float,
        log_depth: int,
        durability: Durability,
    ) -> None:
        self.store, self.modes, self.model, self.versions = store, modes, modes.model, versions
        self.assets, self.health, self.admission = assets, health, admission
        self.default_ttl_s, self.max_ttl_s, self.log_depth = default_ttl_s, max_ttl_s, log_depth
        self.durability = durability
        self.degraded_clock = DegradedClock()

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
        with store_errors():
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
        with store_errors():
            record = self.store.load(SessionId(session_id))
            ttl_left = self.store.ttl_left_s(SessionId(session_id))
            log_depth = self.store.log_depth(SessionId(session_id))
        if record is None or ttl_left is None:
            raise _not_found(session_id)
        return SessionSummary(record, ttl_left, log_depth)

    def close(self, session_id: str) -> bool:
        with store_errors():
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
        priority: Priority = Priority.NORMAL,
    ) -> StepAnswer:
        received = time.perf_counter()
        self.check_observation(observation)
        sid = SessionId(session_id)
        with store_errors():
            record = self.store.load(sid)
        if record is None:
            raise _not_found(session_id)
        if seq == record.seq and record.last_reply:
            return self._stored_reply(record, record.last_reply)
        if seq != record.seq + 1:
            raise SeqConflict(session_id, record.seq, seq)
        version = self.versions.for_session(record.model_version if record.seq else None)
        if version is None:  # a session without history, and no whole pipeline to start it on
            raise Unavailable(
                f"session={session_id}: no model version is served by every stage; the session "
                "was not advanced, retry the same seq"
            )
        step = StepInput(record, seq, observation, timestamp_s, deadline, version, received)
        assets = self.assets.get(version)
        healthy = self._healthy(version)
        # The fastest acceptable mode's latency lets admission keep what it can still serve;
        # unknown without a quality table, or when the student (usually the fastest) is missing.
        policy = assets.policy if assets.student is not None else None
        best_s = best_latency_s(policy, healthy, priority) if policy else None
        what = f"session={session_id} seq={seq}"
        with self.admission.admitted(what, priority, record.client_id, deadline, best_s):
            return self._serve(step, assets, priority)

    def _serve(self, step: StepInput, assets: VersionAssets, priority: Priority) -> StepAnswer:
        """The step in the best serve mode that can answer in time (fallback.policy)."""
        session_id, seq, version = step.record.session_id, step.seq, step.version
        decision = choose_mode(self._healthy(version), step.time_left_s(), priority, assets)
        lag: LevelStates | None = None
        if decision.verdict is Verdict.FULL:
            try:
                computed = self.modes.full(step)
            except Lagging as exc:  # a long lag: answered from the level stages meanwhile
                lag = exc.level
                level = [s.seq == step.record.seq for s in step.record.stages(self.model.n_stages)]
                healthy = [h and ok for h, ok in zip(self._healthy(version), level, strict=True)]
                decision = choose_mode(healthy, step.time_left_s(), priority, assets)
                if decision.verdict is Verdict.SHED:  # no degraded answer good enough: finish
                    try:  # the replay within this step instead (its progress would be lost)
                        computed = self.modes.full(step, catch_up=False)
                    except Lagging as again:
                        raise DeadlineExceeded(
                            f"session={session_id} seq={seq}: {again}, and no degraded answer "
                            "qualifies; the session was not advanced, retry the same seq"
                        ) from again
                    return self._answer(step, computed, priority)
            except Unavailable as exc:  # a stage failed under this step: degrade at once
                if step.time_left_s() <= 0:
                    raise
                decision = choose_mode(self._healthy(version), step.time_left_s(), priority, assets)
                if decision.verdict is Verdict.FULL:
                    raise
                log.warning("session=%s seq=%d degrades: %s", session_id, seq, exc)
            else:
                return self._answer(step, computed, priority)
        if decision.verdict is Verdict.SHED:
            unlimited = choose_mode(self._healthy(version), math.inf, priority, assets)
            if unlimited.verdict is Verdict.SHED:  # not a matter of time: nothing can serve
                raise Unavailable(
                    f"session={session_id} seq={seq}: no serve mode can answer "
                    f"({unlimited.detail or unlimited.reason.value}); the session was not "
                    "advanced, retry the same seq"
                )
            SHEDS.labels(decision.reason.value, priority.name).inc()
            raise Overloaded(
                f"session={session_id} seq={seq}: no serve mode can answer in time "
                f"({decision.detail or decision.reason.value}); the session was not advanced",
                retry_after_s=SHED_RETRY_AFTER_S,
            )
        if decision.verdict is Verdict.EARLY_EXIT:
            assert decision.exit_stage is not None
            computed = self.modes.early_exit(step, decision.exit_stage, decision.confidence, lag)
        else:
            student = assets.student
            assert student is not None
            computed = self.modes.fallback(step, student, decision.confidence, lag)
        return self._answer(step, computed, priority)

    def _healthy(self, version: str) -> list[bool]:
        return self.health(version, self.model.n_stages)

    def _answer(self, step: StepInput, computed: Computed, priority: Priority) -> StepAnswer:
        record, output, level = step.record, computed.done.value, computed.level
        outcome = replies.StepOutcome(
            session_id=record.session_id,
            seq=step.seq,
            action=output.action,
            serve_mode=computed.mode,
            confidence=computed.confidence,
            model_version=step.version,
            queue_ms=computed.done.queue_s * 1e3,
            stages_ms=sum(output.stage_ms),
            total_ms=(time.perf_counter() - step.received) * 1e3,
            stage_ms=output.stage_ms,
            observation_timestamp_s=step.timestamp_s,
            batch_size=computed.done.batch_size,
            exit_stage=computed.exit_stage,
            replayed_steps=level.replayed_steps,
            state_reset=level.reset,
        )
        reply = replies.encode(outcome)
        commit = StepCommit(
            expected_seq=record.seq,
            new_seq=step.seq,
            stage_states=computed.stage_states,
            last_reply=reply,
            ttl_s=record.ttl_s,
            n_stages=self.model.n_stages,
            observation=tensor_codec.to_bytes(step.observation),
            log_limit=self.log_depth,
            wait_replicas=record.wait_replicas,
            wait_timeout_s=self.durability.wait_timeout_s,
            model_version=step.version if step.version != record.model_version else "",
            student=computed.student,
            anchor=computed.anchor,
        )
        answer = self._commit(record, commit, computed.mode)
        if answer.recomputed:  # counted once the step is committed, not per attempt
            REPLAYED_STEPS.inc(level.replayed_steps)
            STATE_RESETS.inc(level.reset)
            ANSWERS.labels(computed.mode, priority.name).inc()
            self.degraded_clock.answered(computed.mode != "FULL")
            if computed.switching:
                VERSION_SWITCHES.inc()
                log.info(
                    "session=%s seq=%d moved from model %s to %s (replayed %d steps, reset=%s)",
                    record.session_id,
                    step.seq,
                    record.model_version,
                    step.version,
                    level.replayed_steps,
                    level.reset,
                )
        return answer

    def _stored_reply(self, record: SessionRecord, reply: bytes) -> StepAnswer:
        """An earlier answer, acknowledged only once it is as durable as the session asked."""
        if record.wait_replicas:
            with store_errors():
                self.store.confirm_replicated(
                    record.session_id, record.wait_replicas, self.durability.wait_timeout_s
                )
        STORED_REPLIES.inc()
        mode = session_pb2.ServeMode.Name(session_pb2.StepReply.FromString(reply).serve_mode)
        return StepAnswer(reply, mode, recomputed=False)

    def _commit(self, record: SessionRecord, commit: StepCommit, mode: str) -> StepAnswer:
        seq = commit.new_seq
        with store_errors():
            outcome = self.store.commit(record.session_id, commit)
        if outcome.status is CommitStatus.COMMITTED:
            return StepAnswer(commit.last_reply, mode, recomputed=True)
        if outcome.status is CommitStatus.GONE:
            raise _not_found(record.session_id)
        with store_errors():
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
