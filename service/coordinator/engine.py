"""The step contract: validate, load, plan and execute the step, commit on seq, reply.

Knows no gRPC: the servicer maps its exceptions (step_errors) to status codes. How a step is
served is decided by one pure planner (fallback.plan); `_serve` is the loop that executes
each plan and folds its result back into the planner's view.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from actionmesh_client.proto_names import serve_mode_name
from fallback.plan import (
    CatchUp,
    NoPath,
    NoPathReason,
    Shed,
    StepView,
    SwitchView,
    admission_latency_s,
    plan_step,
)
from fallback.priority import Priority
from fallback.serve_mode import ServeMode
from service.coordinator import replies
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets, VersionAssets
from service.coordinator.replay import rebuild_start
from service.coordinator.routing.version_choice import NoPipeline, Stay, Switch, choose_version
from service.coordinator.routing.versions import VersionCatalog
from service.coordinator.serve_modes import (
    Computed,
    ServeModes,
    StageFailed,
    StepInput,
    StepWork,
    StudentFailed,
)
from service.coordinator.session_cache import SessionCache
from service.coordinator.step_errors import (
    ActionmeshError,
    DeadlineExceeded,
    InvalidInput,
    NotEnoughReplicas,
    Overloaded,
    PermissionDenied,
    SeqConflict,
    SessionNotFound,
    StoreUnreachable,
    TooManySessions,
    Unavailable,
)
from service.coordinator.stored_states import without_unreadable_states
from service.proto import session_pb2, tensor_codec
from service.runtime import logs, tracing
from service.runtime.identity import Identity
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
    committed,
    short_id,
)
from state.store import DeadlineSpent, SessionStore, StoreUnavailable, answer_by

log = logging.getLogger(__name__)

# A step's store calls give up this long before the step's deadline (which is the robot's): the
# UNAVAILABLE must reach the robot before its own deadline does, or it sees DEADLINE_EXCEEDED
# and stays on this coordinator for another attempt instead of failing over at once. At most
# this share of the step's time, so that a short step keeps most of its time for the store.
STORE_ANSWER_RESERVE_S = 0.05
STORE_ANSWER_RESERVE_SHARE = 0.1


@dataclass(frozen=True, kw_only=True)
class OpenedSession:
    session_id: str
    ttl_s: float
    model_version: str
    wait_replicas: int


@dataclass(frozen=True, kw_only=True)
class Durability:
    """How sessions that ask for replica acknowledgement are served."""

    max_wait_replicas: int
    wait_timeout_s: float


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    default_ttl_s: float
    max_ttl_s: float
    log_depth: int  # observations kept per session, for replay
    catch_up_budget_s: float  # replay one step may do before it answers
    max_observation_abs: float = 1e4  # larger observation values are refused
    sessions_per_identity: int = 0  # open sessions one identity may hold (auth on); 0: any


@dataclass(frozen=True, kw_only=True)
class SessionSummary:
    record: SessionRecord
    ttl_left_s: float
    log_depth: int


@dataclass(frozen=True, kw_only=True)
class StepAnswer:
    reply: bytes  # a serialized actionmesh.v1.StepReply
    serve_mode: ServeMode
    recomputed: bool
    # Where the coordinator's time went (0 for a stored reply), for the server-timing trailer.
    load_ms: float = 0.0
    encode_ms: float = 0.0
    commit_ms: float = 0.0


# Stage health per stage of a model version (StageRouter.healthy).
Health = Callable[[str, int], list[bool]]


class SessionEngine:
    def __init__(
        self,
        *,
        store: SessionStore,
        cache: SessionCache,
        modes: ServeModes,
        versions: VersionCatalog,
        assets: ModelAssets,
        health: Health,
        admission: AdmissionGate,
        limits: SessionLimits,
        durability: Durability,
    ) -> None:
        self.store, self.modes, self.model, self.versions = store, modes, modes.model, versions
        self.cache = cache
        self.assets, self.health, self.admission = assets, health, admission
        self.limits, self.durability = limits, durability
        self.degraded_clock = DegradedClock()

    def open(
        self,
        ttl_s: float,
        client_id: str,
        wait_replicas: int,
        caller: Identity | None = None,
        *,
        request_id: str = "",
    ) -> OpenedSession:
        """A new session; with auth on (`caller` given) it belongs to the caller. With a
        request_id, the one an earlier call by the same caller with the same client_id and
        request_id opened, if it is still there (a retried open leaves no stray session)."""
        if not (ttl_s >= 0 and math.isfinite(ttl_s)):
            raise InvalidInput(
                f"ttl_s must be a finite number >= 0 (0: the default), got {ttl_s}", "ttl_s"
            )
        if wait_replicas > self.durability.max_wait_replicas:
            raise InvalidInput(
                f"wait_replicas {wait_replicas} exceeds this coordinator's max_wait_replicas "
                f"{self.durability.max_wait_replicas}",
                "wait_replicas",
            )
        self._check_replicas(wait_replicas)
        ttl = min(ttl_s or self.limits.default_ttl_s, self.limits.max_ttl_s)
        choice = choose_version(self.versions.snapshot(), None)
        if isinstance(choice, NoPipeline | Switch):
            raise Unavailable("no model version is served by every stage; retry shortly")
        owner = caller.name if caller is not None else ""
        session_id = _new_session_id(owner, client_id, request_id)
        record = SessionRecord(
            session_id, 0, choice.version, ttl, client_id, wait_replicas=wait_replicas, owner=owner
        )
        with store_errors():
            try:
                self.store.create(record)
            except ValueError:  # only a request_id repeats an id: the open is a retry
                existing = self.store.load(session_id) if request_id else None
                if existing is None or existing.client_id != client_id:
                    raise
                check_owner(existing, caller)
                # Not the request_id: with the client_id it derives the session id.
                log.info("session open retried", extra=logs.fields(session=session_id))
                return OpenedSession(
                    session_id=session_id,
                    ttl_s=existing.ttl_s,
                    model_version=existing.model_version,
                    wait_replicas=existing.wait_replicas,
                )
            if caller is not None and self.limits.sessions_per_identity:
                self._count_or_delete(session_id, caller)
            if wait_replicas:  # a session that asks for replicas must itself survive a failover
                self._confirm_or_delete(session_id, wait_replicas)
        log.info(
            "session opened owner=%r client=%r ttl=%.1fs wait_replicas=%d",
            owner,
            client_id,
            ttl,
            wait_replicas,
            extra=logs.fields(session=session_id),
        )
        return OpenedSession(
            session_id=session_id,
            ttl_s=ttl,
            model_version=choice.version,
            wait_replicas=wait_replicas,
        )

    def _count_or_delete(self, session_id: SessionId, caller: Identity) -> None:
        """Counted after it is created, so that pruning the owner's count of gone sessions
        never drops one still being opened."""
        limit = self.limits.sessions_per_identity
        if self.store.reserve_for_owner(caller.name, session_id, limit):
            return
        self.store.delete(session_id)
        raise TooManySessions(
            f"identity {caller.name!r} already holds {limit} open sessions (coordinator setting "
            "sessions_per_identity); close one, or let an idle one expire"
        )

    def _check_replicas(self, wait_replicas: int) -> None:
        """Refused before anything is created: a session its caller never hears of would
        linger for its TTL."""
        if not wait_replicas:
            return
        with store_errors():
            connected = self.store.replicas()
        if wait_replicas > connected:
            raise NotEnoughReplicas(
                f"wait_replicas {wait_replicas}: the session store has {connected} replicas "
                "connected; ask for at most that many"
            )

    def _confirm_or_delete(self, session_id: SessionId, wait_replicas: int) -> None:
        try:
            self.store.confirm_replicated(session_id, wait_replicas, self.durability.wait_timeout_s)
        except StoreUnavailable:
            self.store.delete(session_id)  # the caller is not told its id: leave nothing behind
            raise

    def get(self, session_id: str, caller: Identity | None = None) -> SessionSummary:
        with store_errors():
            record = self.store.load(SessionId(session_id))
            if record is not None:
                check_owner(record, caller)
            ttl_left = self.store.ttl_left_s(SessionId(session_id))
            log_depth = self.store.log_depth(SessionId(session_id))
        if record is None or ttl_left is None:
            raise _not_found(session_id)
        return SessionSummary(record=record, ttl_left_s=ttl_left, log_depth=log_depth)

    def close(self, session_id: str, caller: Identity | None = None) -> bool:
        with store_errors():
            if caller is None:
                closed = self.store.delete(SessionId(session_id))
            else:
                closed = self._close_owned(SessionId(session_id), caller)
        log.info("session closed existed=%s", closed, extra=logs.fields(session=session_id))
        return closed

    def _close_owned(self, session_id: SessionId, caller: Identity) -> bool:
        record = self.store.load(session_id)
        if record is None:
            return False
        check_owner(record, caller)
        closed = self.store.delete(session_id)
        if record.owner:
            self.store.release_for_owner(record.owner, session_id)
        return closed

    def check_observation(self, observation: torch.Tensor) -> None:
        want = [self.model.observation_dim]
        if observation.dtype != torch.float32:
            raise InvalidInput(
                f"observation dtype must be float32, got {str(observation.dtype).removeprefix('torch.')}",
                "observation",
            )
        if list(observation.shape) != want:
            raise InvalidInput(
                f"observation shape must be {want}, got {list(observation.shape)}", "observation"
            )
        bound = self.limits.max_observation_abs
        # One reduction for the usual, valid observation (a NaN or Inf fails it too); the
        # checks below say what is wrong with one that fails it.
        if float(observation.abs().max()) <= bound and math.isfinite(bound):
            return
        if not bool(torch.isfinite(observation).all()):
            bad = (~torch.isfinite(observation)).nonzero().flatten().tolist()
            raise InvalidInput(f"observation has NaN or Inf at index {bad}", "observation")
        if bool((observation.abs() > bound).any()):
            bad = (observation.abs() > bound).nonzero().flatten().tolist()
            raise InvalidInput(
                f"observation values at index {bad} are beyond +-{bound:g} (coordinator setting "
                "max_observation_abs)",
                "observation",
            )

    def step(
        self,
        session_id: str,
        seq: int,
        observation: torch.Tensor,
        timestamp_s: float,
        deadline: float,
        priority: Priority = Priority.NORMAL,
        caller: Identity | None = None,
        *,
        observation_id: int = 0,
        tick: int = 0,
    ) -> StepAnswer:
        """One step. With auth on (`caller` given) only the session's owner (or an admin) may
        step it, and fair share is by the caller's identity rather than the session's claimed
        client_id. observation_id and tick are the client's, echoed in the reply (its chunk's
        first action is for `tick`)."""
        received = time.perf_counter()
        self.check_observation(observation)
        with answer_by(store_deadline(deadline)):
            loading = time.perf_counter()
            record = self._next_step_of(session_id, seq, caller)
            if isinstance(record, StepAnswer):
                return record
            loaded = time.perf_counter()
            choice, version = self._version_for(record)
            step = StepInput(
                record=record,
                seq=seq,
                observation=observation,
                timestamp_s=timestamp_s,
                deadline=deadline,
                version=version,
                received=received,
                load_s=loaded - loading,
                observation_id=observation_id,
                tick=tick,
            )
            view, assets = self._view(step, choice, priority)
            what = f"session={short_id(session_id)} seq={seq}"
            best_s = admission_latency_s(view)
            share = caller.name if caller is not None else record.client_id
            admitted = self.admission.admitted(what, priority, share, deadline, best_s)
            with admitted, store_errors():
                return self._serve(step, view, assets, priority)

    def _version_for(self, record: SessionRecord) -> tuple[Stay | Switch, str]:
        """The step's version from the latest snapshot (no I/O: vetting is done off the path)."""
        choice = choose_version(
            self.versions.snapshot(),
            record.model_version if record.seq else None,
            record.version_revision,
        )
        if isinstance(choice, NoPipeline):
            raise Unavailable(
                f"session={short_id(record.session_id)}: no model version is served by every "
                "stage; the session was not advanced, retry the same seq"
            )
        return choice, choice.current if isinstance(choice, Switch) else choice.version

    def _next_step_of(
        self, session_id: str, seq: int, caller: Identity | None
    ) -> SessionRecord | StepAnswer:
        """The session, when `seq` is its next step; the stored reply when it is a retry.
        A session this coordinator committed last needs no load (see session_cache)."""
        cached = self.cache.take(SessionId(session_id), seq, lambda r: check_owner(r, caller))
        if cached is not None:
            return cached
        with store_errors():
            record = self.store.load(SessionId(session_id))
        if record is None:
            raise _not_found(session_id)
        check_owner(record, caller)
        if seq == record.seq and record.last_reply:
            return self._stored_reply(record, record.last_reply)
        if seq != record.seq + 1:
            raise SeqConflict(session_id, record.seq, seq)
        return without_unreadable_states(record, self.model)

    def _view(
        self, step: StepInput, choice: Stay | Switch, priority: Priority
    ) -> tuple[StepView, VersionAssets]:
        """What the planner sees; the version's assets as loaded now (never loaded here)."""
        n, record, assets = self.model.n_stages, step.record, self.assets.loaded(step.version)
        switch = None
        if isinstance(choice, Switch):
            progress = record.switch
            ready = progress is not None and (progress.version, progress.seq) == (
                choice.target,
                record.seq,
            )
            healthy = tuple(self.health(choice.target, n))
            switch = SwitchView(version=choice.target, healthy=healthy, ready=ready)
        view = StepView(
            version=step.version,
            healthy=tuple(self.health(step.version, n)),
            level=tuple(s.seq == record.seq for s in record.stages(n)),
            time_left_s=step.time_left_s(),
            priority=priority,
            policy=assets.policy,
            student_loaded=assets.student is not None,
            catch_up_budget_s=self.limits.catch_up_budget_s,
            switch=switch,
        )
        return view, assets

    def _serve(
        self, step: StepInput, view: StepView, assets: VersionAssets, priority: Priority
    ) -> StepAnswer:
        """Plan, execute, fold the result into the view, plan again, until answered."""
        record = step.record
        work = StepWork(
            states=[s.data for s in record.stages(self.model.n_stages)], switch=record.switch
        )
        while True:
            with tracing.span("actionmesh.plan"):
                plan = plan_step(self._as_of_now(view, step, work))
                tracing.annotate({"actionmesh.plan": type(plan).__name__})
            if isinstance(plan, Shed | NoPath):
                raise _refusal(step, plan, priority, work)
            if isinstance(plan, CatchUp):
                with tracing.span("actionmesh.replay", {"actionmesh.depth": plan.depth}):
                    caught_up = self.modes.catch_up(step, plan, work)
                if isinstance(caught_up, StageFailed):
                    view = self._failed(step, view, caught_up, work)
                else:
                    view = view.with_catch_up(plan, caught_up, step.time_left_s())
                continue
            computed = self.modes.answer(step, plan, work, assets.student)
            if isinstance(computed, StudentFailed):
                work.tried.append(computed.detail)
                view = view.without_student()
                continue
            if isinstance(computed, StageFailed):
                view = self._failed(step, view, computed, work)
                continue
            return self._answer(step, computed, work, priority)

    def _as_of_now(self, view: StepView, step: StepInput, work: StepWork) -> StepView:
        """The view with the time left now and, while a switch waits for its rebuild, whether
        the log can make it exact and how long its replay is estimated to take (a chunk of
        this step may have advanced it)."""
        now = dataclasses.replace(view, time_left_s=step.time_left_s())
        switch = view.switch
        if switch is None or switch.ready:
            return now
        start = rebuild_start(step.record, self.limits.log_depth, switch.version, work.switch)
        steps = step.record.seq - start.seq if start is not None else 0
        rebuild = dataclasses.replace(
            switch, exact=start is not None, replay_s=steps * self.modes.pass_s()
        )
        return dataclasses.replace(now, switch=rebuild)

    @staticmethod
    def _failed(step: StepInput, view: StepView, failed: StageFailed, work: StepWork) -> StepView:
        what = "the pipeline" if failed.late else f"stage {failed.stage}"
        log.warning(
            "%s of model %s %s, the step degrades: %s",
            what,
            failed.version,
            "was late" if failed.late else "failed",
            failed.detail,
            extra=logs.fields(session=step.record.session_id, seq=step.seq, stage=failed.stage),
        )
        work.tried.append(failed.detail)
        return view.with_stage_failed(failed.version, failed.stage)

    def _answer(
        self, step: StepInput, computed: Computed, work: StepWork, priority: Priority
    ) -> StepAnswer:
        record = step.record
        moved = computed.version != record.model_version
        switched = moved and record.seq > 0
        reset = (
            computed.reset
            or work.reset
            or (switched and work.switch is not None and not work.switch.exact)
        )
        encoding = time.perf_counter()
        reply = self._reply(step, computed, work, reset)
        encoded = time.perf_counter()
        commit = StepCommit(
            expected_seq=record.seq,
            new_seq=step.seq,
            stage_states=computed.stage_states,
            last_reply=reply,
            ttl_s=record.ttl_s,
            n_stages=self.model.n_stages,
            observation=tensor_codec.to_bytes(step.observation),
            log_limit=self.limits.log_depth,
            wait_replicas=record.wait_replicas,
            wait_timeout_s=self.durability.wait_timeout_s,
            model_version=computed.version if moved else "",
            version_revision=(
                max(record.version_revision, self.versions.snapshot().desired_revision)
                if moved
                else 0
            ),
            student=computed.student,
            anchor=work.anchor,
            # progress is written only when this step made some (the store keeps the last)
            switch=work.switch if not moved and work.switch is not record.switch else None,
        )
        with tracing.span("actionmesh.commit", {"actionmesh.serve_mode": computed.mode.value}):
            committed_answer = self._commit(record, commit, computed.mode)
        answer = dataclasses.replace(
            committed_answer,
            load_ms=step.load_s * 1e3,
            encode_ms=(encoded - encoding) * 1e3,
            commit_ms=(time.perf_counter() - encoded) * 1e3,
        )
        if answer.recomputed:  # counted once the step is committed, not per attempt
            self._count(step, computed, work.replayed_steps, reset, priority, switched)
        if step.time_left_s() <= 0:  # committed, but late (a slow store): a retry gets it stored
            raise DeadlineExceeded(
                f"session={short_id(record.session_id)} seq={step.seq}: answered after the "
                "deadline; the step is committed, retry the same seq for its reply"
            )
        return answer

    @staticmethod
    def _reply(step: StepInput, computed: Computed, work: StepWork, reset: bool) -> bytes:
        output = computed.done.value
        return replies.encode(
            replies.StepOutcome(
                session_id=step.record.session_id,
                seq=step.seq,
                action=output.action,
                serve_mode=computed.mode,
                confidence=computed.confidence,
                model_version=computed.version,
                queue_ms=computed.done.queue_s * 1e3,
                stages_ms=sum(output.stage_ms),
                total_ms=(time.perf_counter() - step.received) * 1e3,
                stage_ms=output.stage_ms,
                stage_compute_ms=output.compute_ms,
                load_ms=step.load_s * 1e3,
                observation_timestamp_s=step.timestamp_s,
                batch_size=computed.done.batch_size,
                exit_stage=computed.exit_stage,
                replayed_steps=work.replayed_steps,
                state_reset=reset,
                observation_id=step.observation_id,
                first_action_tick=step.tick,
            )
        )

    def _count(
        self,
        step: StepInput,
        computed: Computed,
        replayed: int,
        reset: bool,
        priority: Priority,
        switched: bool,
    ) -> None:
        REPLAYED_STEPS.inc(replayed)
        STATE_RESETS.inc(reset)
        ANSWERS.labels(computed.mode.value, priority.name).inc()
        self.degraded_clock.answered(computed.mode is not ServeMode.FULL)
        if switched:
            VERSION_SWITCHES.inc()
            log.info(
                "session moved from model %s to %s (reset=%s)",
                step.record.model_version,
                computed.version,
                reset,
                extra=logs.fields(session=step.record.session_id, seq=step.seq),
            )

    def _stored_reply(self, record: SessionRecord, reply: bytes) -> StepAnswer:
        """An earlier answer, acknowledged only once it is as durable as the session asked."""
        if record.wait_replicas:
            with store_errors():
                self.store.confirm_replicated(
                    record.session_id, record.wait_replicas, self.durability.wait_timeout_s
                )
        STORED_REPLIES.inc()
        mode = serve_mode_name(session_pb2.StepReply.FromString(reply).serve_mode)
        return StepAnswer(reply=reply, serve_mode=ServeMode(mode), recomputed=False)

    def _commit(self, record: SessionRecord, commit: StepCommit, mode: ServeMode) -> StepAnswer:
        seq = commit.new_seq
        outcome = self.store.commit(record.session_id, commit)
        if outcome.status is CommitStatus.COMMITTED:
            self.cache.put(committed(record, commit))
            return StepAnswer(reply=commit.last_reply, serve_mode=mode, recomputed=True)
        if outcome.status is CommitStatus.GONE:
            raise _not_found(record.session_id)
        current = self.store.load(record.session_id)
        if current is not None and current.seq == seq:  # committed by another coordinator, or
            # by our own retried commit whose answer was lost
            log.info(
                "lost the commit race; returning the stored reply",
                extra=logs.fields(session=record.session_id, seq=seq),
            )
            return self._stored_reply(current, current.last_reply)
        raise SeqConflict(record.session_id, outcome.current_seq or 0, seq)


def _refusal(
    step: StepInput, plan: Shed | NoPath, priority: Priority, work: StepWork
) -> ActionmeshError:
    what = f"session={short_id(step.record.session_id)} seq={step.seq}"
    tried = f"; failed: {'; '.join(work.tried)}" if work.tried else ""
    if isinstance(plan, Shed):
        SHEDS.labels(plan.reason, priority.name).inc()
        return Overloaded(
            f"{what}: no serve mode can answer in time ({plan.detail}){tried}; the session was "
            "not advanced",
            retry_after_s=plan.retry_after_s,
        )
    if plan.reason is NoPathReason.DEADLINE:
        return DeadlineExceeded(
            f"{what}: {plan.detail}{tried}; the session was not advanced, retry the same seq"
        )
    return Unavailable(
        f"{what}: no serve mode can answer ({plan.detail}){tried}; the session was not "
        "advanced, retry the same seq"
    )


def check_owner(record: SessionRecord, caller: Identity | None) -> None:
    """PermissionDenied unless auth is off (no caller), the caller opened the session, or
    it is an admin. Says nothing of the session beyond that it is not the caller's."""
    if caller is not None and not caller.may_use(record.owner):
        raise PermissionDenied(
            f"session={short_id(record.session_id)} belongs to another identity than "
            f"{caller.name!r}"
        )


def _new_session_id(owner: str, client_id: str, request_id: str) -> SessionId:
    """24 URL-safe characters: random, or, for an open with a request_id, derived from it, the
    client_id and the owner (a retry of the open gets the same id, another identity never; the
    request_id should be as unguessable as a session id, say a UUID4)."""
    if not request_id:
        return SessionId(secrets.token_urlsafe(18))
    digest = hashlib.sha256(f"{owner}\0{client_id}\0{request_id}".encode()).digest()[:18]
    return SessionId(base64.urlsafe_b64encode(digest).decode())


def store_deadline(deadline: float) -> float:
    """When a step's store calls must have answered (time.monotonic()), for a step that must
    be answered by `deadline`: early enough for an UNAVAILABLE to reach the robot in time."""
    left_s = deadline - time.monotonic()
    return deadline - min(STORE_ANSWER_RESERVE_S, STORE_ANSWER_RESERVE_SHARE * max(0.0, left_s))


@contextmanager
def store_errors() -> Iterator[None]:
    """Turns an unreachable store into StoreUnreachable: the step was not advanced, or its
    commit's outcome is unknown; either way a retry of the same seq gets the right answer."""
    try:
        yield
    except DeadlineSpent as exc:  # out of time before the store was even asked
        raise DeadlineExceeded(
            f"the step's deadline passed before the session store was reached ({exc}); the "
            "session was not advanced, retry the same seq"
        ) from exc
    except StoreUnavailable as exc:
        raise StoreUnreachable(f"session store unavailable: {exc}; retry the same seq") from exc


def _not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(
        f"session={short_id(session_id)} not found: unknown, closed, or expired (a session "
        "expires when no step arrives within its TTL); open a new session"
    )
