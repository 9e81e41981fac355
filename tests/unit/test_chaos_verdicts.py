"""The chaos invariants on synthetic run records: a clean run passes every one, and each kind
of breakage fails the invariant that promises against it, naming the offending step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chaos.record import FaultWindow, LeaderSample, RobotEnd, RunRecord, StepRecord
from chaos.verdicts import INVARIANTS, check, recovery_s, step_waits, summary


def ok(robot: int, seq: int, at: float, mode: str = "FULL", **extra: object) -> StepRecord:
    return StepRecord(robot, seq, at, at + 0.01, "OK", mode, "v1", ref_error=0.0, **extra)  # type: ignore[arg-type]


def clean_record() -> RunRecord:
    """Two robots, ten steps each at 10 Hz; robot 1 has one failed attempt at seq 5 that it
    resent; one fault window from 0.35 s to 0.6 s."""
    record = RunRecord("kill-leader", 0, 1.0, 2, 10.0, 0.5)
    record.schedule = [{"at_s": 0.35, "fault": "kill-leader", "hold_s": 0.2, "pick": 1}]
    for robot in (0, 1):
        for seq in range(1, 11):
            at = seq * 0.1
            if robot == 1 and seq == 5:
                record.steps.append(
                    StepRecord(1, 5, at - 0.05, at - 0.04 + 0.5, "DEADLINE_EXCEEDED")
                )
            record.steps.append(ok(robot, seq, at + (0.5 if robot == 1 and seq >= 5 else 0.0)))
    record.faults = [FaultWindow("kill-leader", "stage-1-r0", 0.35, 0.6, "kill -9")]
    record.ends = [RobotEnd(0, "s0", 1, 10, 10), RobotEnd(1, "s1", 0, 10, 10)]
    # Stage 1's leader killed at 0.35 s: its key goes with its lease, r1 takes over at 0.5 s.
    record.leaders = [
        *leading(0.25, 1, "stage-1-r0", 0xA),
        LeaderSample(0.5, 1, "stage-1-r0", 0xA, "self", False),  # stale claim, lease gone
        *leading(0.5, 1, "stage-1-r1", 0xB),
    ]
    record.leader_polls = 4
    return record


def leading(at: float, stage: int, replica: str, lease: int) -> list[LeaderSample]:
    """A replica leading by etcd's key and by its own word, under its live lease."""
    return [LeaderSample(at, stage, replica, lease, source, True) for source in ("etcd", "self")]


def verdicts(record: RunRecord) -> dict[str, tuple[bool, list[str]]]:
    return {v.invariant: (v.ok, v.offending) for v in check(record)}


def failing(record: RunRecord) -> dict[str, list[str]]:
    return {name: why for name, (good, why) in verdicts(record).items() if not good}


def test_a_clean_run_passes_every_invariant() -> None:
    assert list(verdicts(clean_record())) == list(INVARIANTS)
    assert failing(clean_record()) == {}


def test_a_hang_and_a_non_retryable_status_break_answered_in_time() -> None:
    record = clean_record()
    record.steps[0] = dataclasses.replace(record.steps[0], answered_s=record.steps[0].sent_s + 2.0)
    record.steps.append(StepRecord(0, 11, 1.2, 1.21, "INTERNAL"))
    bad = failing(record)
    assert list(bad) == ["answered-in-time"]
    assert (
        "robot 0 seq 1" in bad["answered-in-time"][0]
        and "past the deadline" in bad["answered-in-time"][0]
    )
    assert "INTERNAL" in bad["answered-in-time"][1]


def test_a_skipped_or_doubled_seq_breaks_exactly_once() -> None:
    skipped = clean_record()
    skipped.steps = [s for s in skipped.steps if not (s.robot == 0 and s.seq == 4)]
    skipped.ends[0] = dataclasses.replace(skipped.ends[0], acked=9)
    assert failing(skipped)["exactly-once"][0].startswith("robot 0 seq 5")
    doubled = clean_record()
    doubled.steps.append(ok(0, 3, 0.95))
    doubled.ends[0] = dataclasses.replace(doubled.ends[0], acked=11)
    assert "exactly-once" in failing(doubled)


def test_the_store_disagreeing_with_the_robot_breaks_exactly_once_and_durable() -> None:
    record = clean_record()
    record.ends[0] = dataclasses.replace(record.ends[0], stored_seq=8)
    bad = failing(record)
    assert bad["exactly-once"] == ["robot 0: the store holds seq 8, the robot acknowledged 10"]
    assert bad["durable"] == ["robot 0 (wait_replicas=1): 2 lost"]


def test_steps_lost_without_wait_replicas_to_a_redis_kill_are_reported_not_failed() -> None:
    record = clean_record()
    record.faults = [FaultWindow("kill-redis-primary", "redis port 1", 0.35, 0.6)]
    record.ends[1] = dataclasses.replace(record.ends[1], stored_seq=7, error="SeqConflict: at 7")
    result = {v.invariant: v for v in check(record)}
    assert all(v.ok for v in result.values())
    assert "lost 3 acknowledged" in result["durable"].note
    assert "1 robot(s) with wait_replicas=0" in result["exactly-once"].note


def test_an_unlabelled_answer_breaks_labelled() -> None:
    record = clean_record()
    record.steps[3] = dataclasses.replace(record.steps[3], mode="UNSPECIFIED")
    assert failing(record) == {"labelled": ["robot 0 seq 4 at 0.40s: serve mode UNSPECIFIED"]}


def test_an_answer_off_the_reference_breaks_state_equals_reference() -> None:
    record = clean_record()
    record.steps[6] = dataclasses.replace(record.steps[6], ref_error=0.3)
    assert list(failing(record)) == ["state-equals-reference"]
    uncompared = clean_record()
    uncompared.steps[6] = dataclasses.replace(uncompared.steps[6], ref_error=None, state_reset=True)
    result = {v.invariant: v for v in check(uncompared)}
    assert (
        result["state-equals-reference"].ok
        and "1 answer(s) announced a state reset" in result["state-equals-reference"].note
    )


def test_a_shed_safety_step_breaks_safety_never_shed_a_shed_normal_one_does_not() -> None:
    record = clean_record()
    record.ends[1] = dataclasses.replace(record.ends[1], priority="SAFETY")
    record.steps.append(StepRecord(0, 11, 1.1, 1.11, "RESOURCE_EXHAUSTED"))
    assert failing(record) == {}
    record.steps.append(StepRecord(1, 11, 1.6, 1.61, "RESOURCE_EXHAUSTED"))
    assert failing(record) == {"safety-never-shed": ["robot 1 seq 11 at 1.60s: a SAFETY step shed"]}


def test_a_failed_injection_and_a_leftover_process_are_failures() -> None:
    record = clean_record()
    record.faults = [
        dataclasses.replace(record.faults[0], ok=False, detail="stage 1 has no leader")
    ]
    record.leftover_processes = ["shard-0-r0 (pid 42)"]
    bad = failing(record)
    assert bad["faults-injected"] == ["kill-leader on stage-1-r0 at 0.35s: stage 1 has no leader"]
    assert bad["processes-gone"] == ["still running: shard-0-r0 (pid 42)"]


def test_the_figures_count_retries_into_the_wait_and_measure_recovery() -> None:
    record = clean_record()
    waits = dict(step_waits(record))
    # robot 1 seq 5: sent at 0.45 s, failed, resent, answered at 1.01 s
    assert max(waits.values()) == pytest.approx(0.56)
    figures = summary(record)
    assert figures["failed"] == {"DEADLINE_EXCEEDED": 1}
    assert figures["modes"] == {"FULL": 20}
    # robot 1: seq 4 answered at 0.41 s, then the failed attempt's answer at 0.96 s
    assert figures["worst_gap_s"] == pytest.approx(0.55)
    # the failed attempt's answer at 0.96 s was the last thing other than FULL
    assert recovery_s(record, 0) == pytest.approx(0.96 - 0.35)


def test_a_record_survives_its_json_file(tmp_path: Path) -> None:
    record = clean_record()
    record.save(tmp_path / "record.json")
    assert RunRecord.load(tmp_path / "record.json") == record


def test_two_replicas_leading_a_stage_under_live_leases_break_one_leader_per_stage() -> None:
    record = clean_record()
    # r0 (paused, say) still says it leads, and its lease is still live, while r1 holds the key.
    record.leaders.append(LeaderSample(0.5, 1, "stage-1-r0", 0xA, "self", True))
    bad = failing(record)
    assert list(bad) == ["one-leader-per-stage"]
    assert bad["one-leader-per-stage"] == [
        "stage 1 at 0.50s: stage-1-r0 (lease a), stage-1-r1 (lease b) lead at once"
    ]


def test_one_lease_claimed_by_two_replicas_or_no_leader_seen_breaks_one_leader_per_stage() -> None:
    record = clean_record()
    record.leaders.append(LeaderSample(0.75, 2, "stage-2-r0", 0xB, "etcd", True))
    assert failing(record) == {
        "one-leader-per-stage": ["lease b claimed by stage-1-r1, stage-2-r0"]
    }
    record.leaders = []
    assert failing(record) == {
        "one-leader-per-stage": ["no leader observed: the leader watch recorded nothing"]
    }
