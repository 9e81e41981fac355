"""Every branch of a step through the coordinator's real step path, in process: each plan,
lag and catch-up, a stage failing, hanging or refusing mid-step, shed versus no path, the
commit race between two engines, and version switches. Answers are checked against the
in-process reference model."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import pytest
import torch

from chaos.reference import observations, reference_run, reference_with_exits
from service.coordinator.assets import ModelAssets, VersionAssets
from service.coordinator.engine import SessionEngine
from service.coordinator.routing.in_process_stage import Fault
from service.coordinator.session_cache import SessionCache
from service.coordinator.step_errors import (
    DeadlineExceeded,
    InvalidInput,
    NotEnoughReplicas,
    Overloaded,
    Unavailable,
)
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.proto import session_pb2, tensor_codec
from state.session import SessionId, StageIndex
from tests.support.in_process import InProcessCoordinator
from tests.support.quality_tables import policy

pytestmark = pytest.mark.timeout(60)

CFG = ModelConfig(
    d_model=32, n_heads=2, n_layers=3, tokens=4, memory_tokens=2, n_stages=3, student_hidden=16
)
V1 = ActionModel(CFG).eval()
V2 = ActionModel(CFG.model_copy(update={"seed": 1})).eval()
OBS = observations(seed=3, steps=160, dim=CFG.observation_dim)
REFERENCE = {"v1": reference_run(V1, OBS)[0], "v2": reference_run(V2, OBS)[0]}
FULL, EARLY_EXIT, FALLBACK = (
    session_pb2.SERVE_MODE_FULL,
    session_pb2.SERVE_MODE_EARLY_EXIT,
    session_pb2.SERVE_MODE_FALLBACK,
)


@pytest.fixture
def coordinator() -> Iterator[InProcessCoordinator]:
    built = InProcessCoordinator({"v1": V1, "v2": V2}, serving=["v1"])
    yield built
    built.close()


def build(**options: object) -> InProcessCoordinator:
    return InProcessCoordinator({"v1": V1, "v2": V2}, **options)  # type: ignore[arg-type]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5)


def test_full_answers_equal_the_reference(coordinator: InProcessCoordinator) -> None:
    sid = coordinator.open()
    want, _ = reference_run(V1, OBS[:10])
    for seq, obs in enumerate(OBS[:10], start=1):
        answer = coordinator.step(sid, seq, obs)
        assert answer.reply.serve_mode == FULL and answer.reply.model_version == "v1"
        assert same(answer.action, want[seq - 1])


def test_a_stage_failing_mid_step_degrades_that_step_and_replay_restores_exactness(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.open()
    full, exits = reference_with_exits(V1, OBS[:8])
    for seq in (1, 2):
        coordinator.step(sid, seq, OBS[seq - 1])
    coordinator.fault("v1", 2, Fault.FAIL)  # no ban yet: the step finds out by calling it
    for seq in (3, 4, 5):
        answer = coordinator.step(sid, seq, OBS[seq - 1])
        assert (answer.reply.serve_mode, answer.reply.exit_stage) == (EARLY_EXIT, 1)
        assert same(answer.action, exits[seq - 1][1])
    coordinator.fault("v1", 2, Fault.NONE)
    coordinator.router._bans.clear()  # the replica "restarted": a new lease ends its ban
    answer = coordinator.step(sid, 6, OBS[5])
    assert answer.reply.serve_mode == FULL and answer.reply.replayed_steps == 3
    assert same(answer.action, full[5])


def test_stage_zero_down_is_answered_by_the_student(coordinator: InProcessCoordinator) -> None:
    sid = coordinator.open()
    coordinator.step(sid, 1, OBS[0])
    coordinator.fault("v1", 0, Fault.FAIL)
    answer = coordinator.step(sid, 2, OBS[1])
    assert answer.reply.serve_mode == FALLBACK
    student = coordinator.students["v1"]
    assert student is not None
    with torch.no_grad():
        hidden = student.fresh_state(1)
        for obs in OBS[:2]:  # a cold student warms up on the log first
            want, hidden = student(obs.unsqueeze(0), hidden)
    assert same(answer.action, want[0])


def test_a_hung_replica_costs_one_stage_timeout_and_its_standby_answers() -> None:
    coordinator = build(serving=["v1"], replicas=2, stage_timeout_s=0.1)
    try:
        sid = coordinator.open()
        want, _ = reference_run(V1, OBS[:3])
        coordinator.stage("v1", 1, 0).faults.fault = Fault.HANG
        answer = coordinator.step(sid, 1, OBS[0], timeout_s=1.0)
        assert answer.reply.serve_mode == FULL and same(answer.action, want[0])
        assert coordinator.stage("v1", 1, 1).calls == 1
        coordinator.step(sid, 2, OBS[1])  # banned now: straight to the standby
        assert coordinator.stage("v1", 1, 0).calls == 1
    finally:
        coordinator.close()


def test_a_version_refusal_goes_to_another_replica_without_a_ban() -> None:
    coordinator = build(serving=["v1"], replicas=2)
    try:
        sid = coordinator.open()
        coordinator.stage("v1", 2, 0).faults.fault = Fault.WRONG_VERSION
        answer = coordinator.step(sid, 1, OBS[0])
        assert answer.reply.serve_mode == FULL
        assert coordinator.router._bans == {}
    finally:
        coordinator.close()


def test_a_long_lag_is_caught_up_over_several_steps_answered_degraded_meanwhile() -> None:
    coordinator = build(serving=["v1"], catch_up_budget_s=0.03)
    try:
        sid = coordinator.open()
        full, exits = reference_with_exits(V1, OBS)
        coordinator.step(sid, 1, OBS[0])
        coordinator.fault("v1", 2, Fault.FAIL)
        for seq in range(2, 32):
            coordinator.step(sid, seq, OBS[seq - 1])
        coordinator.fault("v1", 2, Fault.NONE)
        coordinator.router._bans.clear()
        for k in range(CFG.n_stages):  # a replay takes 3 ms or more: at most 10 per step
            coordinator.fault("v1", k, Fault.SLOW, delay_s=0.001)
        modes = []
        for seq in range(32, len(OBS) + 1):
            answer = coordinator.step(sid, seq, OBS[seq - 1])
            modes.append(answer.reply.serve_mode)
            if answer.reply.serve_mode == FULL:
                assert same(answer.action, full[seq - 1])
                break
            assert answer.reply.serve_mode == EARLY_EXIT and answer.reply.replayed_steps >= 1
            assert same(answer.action, exits[seq - 1][1])
        assert modes[-1] == FULL and len(modes) >= 3, modes
    finally:
        coordinator.close()


def test_a_lag_with_no_degraded_answer_finishes_its_catch_up_within_the_step() -> None:
    coordinator = build(serving=["v1"], catch_up_budget_s=1e-9)  # one replayed step per step
    try:
        sid = coordinator.open()
        full, _ = reference_run(V1, OBS[:8])
        coordinator.step(sid, 1, OBS[0])
        coordinator.fault("v1", 0, Fault.FAIL)
        for seq in range(2, 7):
            assert coordinator.step(sid, seq, OBS[seq - 1]).reply.serve_mode == FALLBACK
        coordinator.engine.assets = ModelAssets.preloaded({"v1": VersionAssets(None, None)})
        coordinator.fault("v1", 0, Fault.NONE)
        coordinator.router._bans.clear()
        answer = coordinator.step(sid, 7, OBS[6])  # no stage is level, no student: finish
        assert answer.reply.serve_mode == FULL and answer.reply.replayed_steps == 5
        assert same(answer.action, full[6])
    finally:
        coordinator.close()


def test_shed_when_only_time_is_short_and_unavailable_when_nothing_can_serve() -> None:
    measured = policy()
    coordinator = build(serving=["v1"], policy=measured, student=False)
    try:
        sid = coordinator.open()
        with pytest.raises(Overloaded, match="in time") as shed:
            coordinator.step(sid, 1, OBS[0], timeout_s=0.004)
        assert shed.value.retry_after_s > 0
        coordinator.fault("v1", 0, Fault.FAIL)
        with pytest.raises(Unavailable, match="student is not loaded"):
            coordinator.step(sid, 1, OBS[0])
    finally:
        coordinator.close()


def test_a_pipeline_late_for_the_deadline_leaves_the_student_time_to_answer(
    coordinator: InProcessCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    sid = coordinator.open()
    coordinator.fault("v1", 1, Fault.SLOW, delay_s=0.3)  # within the stage timeout: no failure
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        answer = coordinator.step(sid, 1, OBS[0], timeout_s=0.2)
    assert time.monotonic() - started < 0.2, "answered after the step's deadline"
    assert answer.reply.serve_mode == FALLBACK
    said = [r.getMessage() for r in caplog.records if "degrades" in r.getMessage()]
    assert said and said[0].startswith("the pipeline of model v1 was late"), said
    record = coordinator.store.load(SessionId(sid))
    assert record is not None and record.seq == 1
    assert not any(s.seq for s in record.stages(CFG.n_stages)), "no late stage state committed"


def test_a_step_whose_deadline_passes_without_a_student_is_deadline_exceeded() -> None:
    coordinator = build(serving=["v1"], student=False)
    try:
        sid = coordinator.open()
        coordinator.fault("v1", 1, Fault.SLOW, delay_s=0.15)
        with pytest.raises(DeadlineExceeded):
            coordinator.step(sid, 1, OBS[0], timeout_s=0.1)
        record = coordinator.store.load(SessionId(sid))
        assert record is not None and record.seq == 0, "nothing was committed"
    finally:
        coordinator.close()


def test_two_engines_racing_on_one_seq_commit_once_and_answer_the_same_bytes(
    coordinator: InProcessCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    sid = coordinator.open()
    other = SessionEngine(
        store=coordinator.store,
        cache=SessionCache(64),
        modes=coordinator.engine.modes,
        versions=coordinator.catalog,
        assets=coordinator.engine.assets,
        health=coordinator.router.healthy,
        admission=coordinator.engine.admission,
        limits=coordinator.engine.limits,
        durability=coordinator.engine.durability,
    )
    stale = coordinator.store.load(SessionId(sid))
    first = coordinator.engine.step(sid, 1, OBS[0], 0.0, time.monotonic() + 5)
    # the other engine loaded the session before that commit: it computes seq 1 too
    load, loads = coordinator.store.load, iter([stale])
    coordinator.store.load = lambda s: next(loads, None) or load(s)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="service.coordinator.engine"):
        second = other.step(sid, 1, OBS[0], 0.0, time.monotonic() + 5)
    assert first.recomputed and not second.recomputed
    assert second.reply == first.reply
    assert "lost the commit race" in caplog.text
    record = load(SessionId(sid))
    assert (
        record is not None and record.seq == 1 and coordinator.store.log_depth(SessionId(sid)) == 1
    )


@pytest.mark.parametrize("log_reaches_back", [True, False])
def test_promote_then_rollback_switches_sessions_in_chunks_without_a_failed_step(
    log_reaches_back: bool,
) -> None:
    coordinator = build(
        serving=["v1"], catch_up_budget_s=0.03, log_depth=len(OBS) if log_reaches_back else 4
    )
    try:
        sid = coordinator.open()
        for seq in range(1, 31):
            coordinator.step(sid, seq, OBS[seq - 1])
        coordinator.add_version("v2")
        for version in ("v1", "v2"):  # a replay takes 3 ms or more: at most 10 per step
            for k in range(CFG.n_stages):
                coordinator.fault(version, k, Fault.SLOW, delay_s=0.001)
        seq, phases = 30, []
        for target in ("v2", "v1"):
            coordinator.promote(target)
            versions = []
            while not versions or versions[-1] != target:
                seq += 1
                assert len(versions) < 60, f"not on {target} after 60 steps: {versions}"
                answer = coordinator.step(sid, seq, OBS[seq - 1])
                assert answer.reply.serve_mode == FULL
                versions.append(answer.reply.model_version)
                if versions[-1] == target:  # the switching step
                    assert answer.reply.state_reset is not log_reaches_back
                exact = log_reaches_back or (
                    not phases and versions[-1] == "v1"
                )  # before any switch
                if exact:
                    assert same(answer.action, REFERENCE[answer.reply.model_version][seq - 1])
            phases.append(versions)
        if log_reaches_back:  # the whole history to replay: more than one step's budget
            assert all(len(versions) > 1 for versions in phases), phases
    finally:
        coordinator.close()


def test_a_session_whose_version_is_retired_moves_within_the_step(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.open()
    for seq in (1, 2, 3):
        coordinator.step(sid, seq, OBS[seq - 1])
    coordinator.add_version("v2")
    coordinator.remove_version("v1")
    answer = coordinator.step(sid, 4, OBS[3])  # v1's student answers while v2 catches up
    assert answer.reply.model_version in ("v1", "v2")
    for seq in range(5, 12):
        answer = coordinator.step(sid, seq, OBS[seq - 1])
    want, _ = reference_run(V2, OBS[:11])
    assert answer.reply.model_version == "v2" and answer.reply.serve_mode == FULL
    assert same(answer.action, want[-1])


def test_a_session_asking_for_more_replicas_than_exist_is_refused_before_it_is_created(
    coordinator: InProcessCoordinator,
) -> None:
    with pytest.raises(NotEnoughReplicas, match="0 replicas connected"):
        coordinator.engine.open(0.0, "robot", wait_replicas=1)
    assert coordinator.store._sessions == {}, "no session its caller was never told of"


def test_huge_finite_observations_are_refused_with_the_bound(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.open()
    with pytest.raises(InvalidInput, match=r"beyond \+-10000 .*max_observation_abs"):
        coordinator.step(sid, 1, torch.full((CFG.observation_dim,), 1e30))
    at_bound = torch.full((CFG.observation_dim,), 1e4)
    assert torch.isfinite(coordinator.step(sid, 1, at_bound).action).all()


def test_a_stage_answering_non_finite_values_is_never_answered_nor_committed(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.open()
    coordinator.step(sid, 1, OBS[0])
    coordinator.fault("v1", 2, Fault.NON_FINITE)
    answer = coordinator.step(sid, 2, OBS[1])
    assert (answer.reply.serve_mode, answer.reply.exit_stage) == (EARLY_EXIT, 1)
    assert torch.isfinite(answer.action).all()
    record = coordinator.store.load(SessionId(sid))
    assert record is not None
    for state in record.stage_states.values():
        assert not state.data or torch.isfinite(tensor_codec.from_bytes(state.data)).all()
    assert record.stage_states[StageIndex(2)].seq == 1, "stage 2's NaN state was not committed"


def test_a_move_that_cannot_be_replayed_in_time_is_answered_reset_not_stalled() -> None:
    coordinator = build(serving=["v1"], student=False)
    try:
        sid = coordinator.open()
        for seq in range(1, 41):
            coordinator.step(sid, seq, OBS[seq - 1])
        coordinator.add_version("v2")
        coordinator.remove_version("v1")  # nothing of v1 answers, no student: move or fail
        for k in range(CFG.n_stages):
            coordinator.fault("v2", k, Fault.SLOW, delay_s=0.002)  # 40 replays need 0.24 s+
        answer = coordinator.step(sid, 41, OBS[40], timeout_s=0.1)
        assert (answer.reply.model_version, answer.reply.serve_mode) == ("v2", FULL)
        assert answer.reply.state_reset, "the history could not be replayed in time: said so"
        assert torch.isfinite(answer.action).all()
    finally:
        coordinator.close()


def test_a_student_answering_non_finite_values_is_never_answered(
    coordinator: InProcessCoordinator,
) -> None:
    sid = coordinator.open()
    coordinator.step(sid, 1, OBS[0])
    student = coordinator.students["v1"]
    assert student is not None
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.fill_(math.nan)
    coordinator.fault("v1", 0, Fault.FAIL)
    with pytest.raises(Unavailable, match="non-finite"):
        coordinator.step(sid, 2, OBS[1])
    record = coordinator.store.load(SessionId(sid))
    assert record is not None and record.seq == 1 and record.student is None


def test_two_engines_alternating_on_one_session_never_commit_on_a_stale_cached_record(
    coordinator: InProcessCoordinator,
) -> None:
    """Each engine caches the record it committed while the other moves the session on. A
    robot that resends a step to the engine whose entry is one behind gets the other engine's
    stored reply (the stale commit conflicts, the engine reloads); every answer equals the
    reference; consecutive steps on one engine load nothing."""
    sid = coordinator.open()
    a = coordinator.engine
    b = SessionEngine(
        store=coordinator.store,
        cache=SessionCache(64),
        modes=a.modes,
        versions=coordinator.catalog,
        assets=a.assets,
        health=coordinator.router.healthy,
        admission=a.admission,
        limits=a.limits,
        durability=a.durability,
    )
    load, loads = coordinator.store.load, []
    coordinator.store.load = lambda s: loads.append(s) or load(s)  # type: ignore[method-assign]
    for seq in range(1, 13):  # A, A, B, A, A, B, ...
        engine = b if seq % 3 == 0 else a
        before = len(loads)
        answer = engine.step(sid, seq, OBS[seq - 1], 0.0, time.monotonic() + 5)
        reply = session_pb2.StepReply.FromString(answer.reply)
        assert answer.recomputed and reply.serve_mode == FULL and reply.seq == seq
        assert torch.allclose(
            tensor_codec.decode(reply.action), REFERENCE["v1"][seq - 1], atol=1e-5
        )
        if seq % 3 == 2:
            assert len(loads) == before, "A's step right after its own commit loads nothing"
        if engine is b:  # the robot never saw B's reply and resends it to A
            again = a.step(sid, seq, OBS[seq - 1], 0.0, time.monotonic() + 5)
            assert not again.recomputed and again.reply == answer.reply
    record = load(SessionId(sid))
    assert record is not None and record.seq == 12
    assert coordinator.store.log_depth(SessionId(sid)) == 12, "no seq applied twice"


def test_a_move_beyond_the_log_is_answered_at_once_from_fresh_states_and_says_so() -> None:
    """The log keeps 4 steps of a 10-step history: no replay can make the new version's state
    exact, so the first step after the promotion moves, from fresh states, flagged."""
    coordinator = build(serving=["v1"], log_depth=4)
    try:
        sid = coordinator.open()
        for seq in range(1, 11):
            coordinator.step(sid, seq, OBS[seq - 1])
        coordinator.add_version("v2")
        coordinator.promote("v2")
        fresh, _ = reference_run(V2, OBS[10:14])
        for seq in range(11, 15):
            answer = coordinator.step(sid, seq, OBS[seq - 1])
            assert (answer.reply.model_version, answer.reply.serve_mode) == ("v2", FULL)
            assert answer.reply.state_reset is (seq == 11), "the moving answer says it, once"
            assert answer.reply.replayed_steps == 0
            assert same(answer.action, fresh[seq - 11])
    finally:
        coordinator.close()


def test_a_replayed_step_slower_than_the_catch_up_budget_ends_the_chunk_not_the_step() -> None:
    """A pass on the new version takes 0.6 s (a cold replica), longer than the step's 0.5 s:
    the switch's chunk stops at its budget and the old version answers in time; once the new
    version is quick again (and its slow replica's ban has run out) the session moves,
    exactly."""
    coordinator = build(serving=["v1"], stage_timeout_s=0.4)
    try:
        sid = coordinator.open()
        for seq in range(1, 6):
            coordinator.step(sid, seq, OBS[seq - 1])
        coordinator.add_version("v2")
        for k in range(CFG.n_stages):
            coordinator.fault("v2", k, Fault.SLOW, delay_s=0.2)
        coordinator.promote("v2")
        answer = coordinator.step(sid, 6, OBS[5])
        assert (answer.reply.model_version, answer.reply.serve_mode) == ("v1", FULL)
        assert same(answer.action, REFERENCE["v1"][5])
        for k in range(CFG.n_stages):
            coordinator.fault("v2", k, Fault.NONE)
        seq = 6
        while answer.reply.model_version != "v2":
            seq += 1
            assert seq < 40, "never moved to v2"
            time.sleep(0.05)  # a robot's period: the ban (0.5 s) runs out meanwhile
            answer = coordinator.step(sid, seq, OBS[seq - 1])
        assert not answer.reply.state_reset and same(answer.action, REFERENCE["v2"][seq - 1])
    finally:
        coordinator.close()
