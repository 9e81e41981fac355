"""The step contract: validate, load, batch through the stages, commit on seq, reply.

Knows no gRPC: the servicer maps its exceptions (service.errors) to status codes.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fallback.policy import Verdict, best_latency_s
from fallback.priority import Priority
from service import tensor_codec
from service.coordinator import replies
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets, VersionAssets
from service.coordinator.batcher import Batched, DynamicBatcher
from service.coordinator.degrade import choose_mode, student_step
from service.coordinator.pipeline import PipelineInput, PipelineOutput
from service.coordinator.replay import LevelStates, StepFn, level_states, rebuild_states
from service.coordinator.versions import VersionCatalog
from service.errors import (
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    SeqConflict,
    SessionNotFound,
    Unavailable,
)
from service.metrics import (
    ANSWERS,
    REPLAYED_STEPS,
    SHEDS,
    STATE_RESETS,
    STORED_REPLIES,
    VERSION_SWITCHES,
    DegradedClock,
)
from service.model.config import ModelConfig
from service.model.student import Student
from service.proto import session_pb2
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


@dataclass(frozen=True)
class _Step:
    """One step being served: what every serve mode needs."""

    record: SessionRecord
    seq: int
    observation: torch.Tensor
    timestamp_s: float
    deadline: float  # time.monotonic()
    version: str
    received: float  # time.perf_counter()

    def time_left_s(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class _Computed:
    """A step's answer before it is committed."""

    mode: str  # FULL / EARLY_EXIT / FALLBACK
    confidence: float
    exit_stage: int
    done: Batched[PipelineOutput]
    level: LevelStates  # how the states were brought level first (replay, reset)
    switching: bool  # the session moves to another model version with this step
    stage_states: dict[StageIndex, StageState]  # the stages this step advanced
    student: StageState | None = None


# Stage health per stage of a model version (StageRouter.healthy).
Health = Callable[[str, int], list[bool]]


class SessionEngine:
    def __init__(
        self,
        store: SessionStore,
        batcher: DynamicBatcher[PipelineInput, PipelineOutput],
        model: ModelConfig,
        versions: VersionCatalog,
        assets: ModelAssets,
        health: Health,
        admission: AdmissionGate,
        default_ttl_s: float,
        max_ttl_s: float,
        log_depth: int,
        durability: Durability,
    ) -> None:
        self.store, self.batcher, self.model, self.versions = store, batcher, model, versions
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
        priority: Priority = Priority.NORMAL,
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
        if version is None:  # a session without history, and no whole pipeline to start it on
            raise Unavailable(
                f"session={session_id}: no model version is served by every stage; the session "
                "was not advanced, retry the same seq"
            )
        step = _Step(record, seq, observation, timestamp_s, deadline, version, received)
        assets = self.assets.get(version)
        healthy = self._healthy(version)
        best_s = best_latency_s(assets.policy, healthy, priority) if assets.policy else None
        what = f"session={session_id} seq={seq}"
        with self.admission.admitted(what, priority, record.client_id, deadline, best_s):
            return self._serve(step, assets, priority)

    def _serve(self, step: _Step, assets: VersionAssets, priority: Priority) -> StepAnswer:
        """The step in the best serve mode that can answer in time (fallback.policy)."""
        session_id, seq, version = step.record.session_id, step.seq, step.version
        decision = choose_mode(self._healthy(version), step.time_left_s(), priority, assets)
        if decision.verdict is Verdict.FULL:
            try:
                computed = self._full(step)
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
            SHEDS.labels(decision.reason.value, priority.name).inc()
            raise Overloaded(
                f"session={session_id} seq={seq}: no serve mode can answer in time "
                f"({decision.detail or decision.reason.value}); the session was not advanced",
                retry_after_s=SHED_RETRY_AFTER_S,
            )
        if decision.verdict is Verdict.EARLY_EXIT:
            assert decision.exit_stage is not None
            computed = self._early_exit(step, decision.exit_stage, decision.confidence)
        else:
            student = assets.student
            assert student is not None
            computed = self._fallback(step, student, decision.confidence)
        return self._answer(step, computed, priority)

    def _healthy(self, version: str) -> list[bool]:
        return self.health(version, self.model.n_stages)

    def _replay_fn(self, step: _Step, depth: int) -> StepFn:
        def replay_step(s: int, obs: torch.Tensor, states: list[bytes]) -> list[bytes]:
            item = PipelineInput(
                step.record.session_id, s, obs, states, step.deadline, step.version, depth
            )
            return self._compute(item, step.deadline).value.states

        return replay_step

    def _full(self, step: _Step) -> _Computed:
        record, n = step.record, self.model.n_stages
        replay_step = self._replay_fn(step, n)
        switching = record.seq > 0 and step.version != record.model_version
        with _store_errors():
            if switching:
                level = rebuild_states(record, n, self.store, replay_step, self.log_depth)
            else:
                level = level_states(record, n, self.store, replay_step)
        done = self._compute(
            PipelineInput(
                record.session_id,
                step.seq,
                step.observation,
                level.states,
                step.deadline,
                step.version,
            ),
            step.deadline,
        )
        return _Computed(
            "FULL",
            1.0,
            0,
            done,
            level,
            switching,
            {StageIndex(k): StageState(step.seq, d) for k, d in enumerate(done.value.states)},
        )

    def _early_exit(self, step: _Step, exit_stage: int, confidence: float) -> _Computed:
        """Stages 0..exit_stage advance; the later ones lag until they are back (replay)."""
        record, depth = step.record, exit_stage + 1
        if record.seq > 0 and step.version != record.model_version:
            raise Unavailable(  # a version switch rebuilds every stage: it waits for FULL
                f"session={record.session_id}: moving to model {step.version} needs every stage"
            )
        with _store_errors():
            level = level_states(record, depth, self.store, self._replay_fn(step, depth))
        done = self._compute(
            PipelineInput(
                record.session_id,
                step.seq,
                step.observation,
                level.states,
                step.deadline,
                step.version,
                depth,
            ),
            step.deadline,
        )
        states = {StageIndex(k): StageState(step.seq, d) for k, d in enumerate(done.value.states)}
        return _Computed("EARLY_EXIT", confidence, exit_stage, done, level, False, states)

    def _fallback(self, step: _Step, student: Student, confidence: float) -> _Computed:
        """The student answers; no stage advances. A cold student warms up on the log."""
        record = step.record
        warm = record.student is not None and record.student.seq == record.seq
        state = record.student.data if warm and record.student is not None else b""
        warm_up: list[bytes] = []
        if not warm and record.seq > 0 and self.log_depth:
            first = max(1, record.seq - self.log_depth + 1)
            with _store_errors():
                warm_up = self.store.observations(record.session_id, first, record.seq) or []
        started = time.perf_counter()
        action, new_state = student_step(student, step.observation, state, warm_up)
        done = Batched(PipelineOutput(action, [], [(time.perf_counter() - started) * 1e3]), 0.0, 1)
        return _Computed(
            "FALLBACK",
            confidence,
            0,
            done,
            LevelStates([]),
            False,
            {},
            student=StageState(step.seq, new_state),
        )

    def _answer(self, step: _Step, computed: _Computed, priority: Priority) -> StepAnswer:
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
            with _store_errors():
                self.store.confirm_replicated(
                    record.session_id, record.wait_replicas, self.durability.wait_timeout_s
                )
        STORED_REPLIES.inc()
        mode = session_pb2.ServeMode.Name(session_pb2.StepReply.FromString(reply).serve_mode)
        return StepAnswer(reply, mode, recomputed=False)

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

    def _commit(self, record: SessionRecord, commit: StepCommit, mode: str) -> StepAnswer:
        seq = commit.new_seq
        with _store_errors():
            outcome = self.store.commit(record.session_id, commit)
        if outcome.status is CommitStatus.COMMITTED:
            return StepAnswer(commit.last_reply, mode, recomputed=True)
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
