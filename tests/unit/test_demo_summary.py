"""The demo's summary from recorded ticks, steps and episodes: counts by command source and
serve mode, failed steps apart, success on the task (apart for episodes that played degraded
answers), and what the robot played while the killed stage was down; and when the run may
end."""

from __future__ import annotations

import time

from actionmesh_client import Source
from service.bench.demo import (
    DemoRun,
    EpisodeRecord,
    Fault,
    StepRecord,
    TickRecord,
    stage_recovering,
    summarize,
)


def test_the_summary_counts_ticks_steps_episodes_and_the_fault() -> None:
    run = DemoRun(period_s=0.02)
    sources = [Source.IDLE] + [Source.CHUNK] * 6 + [Source.HOLD] * 2 + [Source.CHUNK]
    modes = ["", "FULL", "FULL", "EARLY_EXIT", "EARLY_EXIT", "EARLY_EXIT"] + ["FULL"] * 4
    run.ticks = [
        TickRecord(i * 0.02, s, m, late=i == 9)
        for i, (s, m) in enumerate(zip(sources, modes, strict=True))
    ]
    run.steps = [
        StepRecord(0.00, 30.0, "FULL"),
        StepRecord(0.05, 40.0, "UNAVAILABLE"),
        StepRecord(0.08, 50.0, "EARLY_EXIT"),
        StepRecord(0.16, 20.0, "FULL"),
    ]
    run.episodes = [
        EpisodeRecord(0.0, 0.96, True, 0.05, {"": 1, "FULL": 47}),
        EpisodeRecord(1.0, 1.96, False, 0.30, {"FULL": 40, "EARLY_EXIT": 8}),
        EpisodeRecord(2.0, 2.96, True, 0.08, {"FULL": 30, "FALLBACK": 18}),
        EpisodeRecord(3.0, 3.96, False, 0.20, {"FULL": 48}),
    ]
    run.fault = Fault(stage=2, at_s=0.05, replica="stage-2-r0", killed_s=0.05, back_s=0.15)
    lines = summarize(run)
    assert lines[0].startswith("summary: 3 steps ok, 1 failed")
    assert lines[1].startswith("ticks: 10 played, CHUNK 7, HOLD 2, STOP 0, IDLE 1; 1 late")
    assert lines[2].startswith("ticks by serve mode: EARLY_EXIT 3, FULL 6 ")
    assert lines[3] == "chunks by serve mode: EARLY_EXIT 1, FULL 2"
    assert lines[4].startswith("task: 2 of 4 episodes reached the target")
    assert lines[4].endswith("1 of 2 played only FULL answers, 1 of 2 played degraded ones")
    # Down from 0.05 s to 0.15 s: ticks at 0.06 .. 0.14 (5), the last one held.
    assert "2 steps after the kill not FULL" in lines[5]
    assert "the robot played 4 of 5 ticks from chunks" in lines[5]
    assert "FULL again 0.01 s after" in lines[5]


def test_a_fault_that_never_happened_says_why() -> None:
    run = DemoRun(period_s=0.02)
    run.fault = Fault(stage=1, at_s=5.0, error="stage 1 has no leader to kill")
    assert summarize(run)[-1] == "fault: none injected (stage 1 has no leader to kill)"


def test_a_plain_run_has_no_fault_line() -> None:
    lines = summarize(DemoRun(period_s=0.02))
    assert lines[-1] == (
        "task: 0 of 0 episodes reached the target (the reach task's rule: on it at each of its "
        "last ticks); 0 of 0 played only FULL answers, 0 of 0 played degraded ones"
    )


def test_the_run_goes_on_until_the_killed_stage_answers_full_again() -> None:
    run = DemoRun(period_s=0.02)
    later = time.monotonic() + 60
    assert not stage_recovering(run, later), "no fault"
    run.fault = Fault(stage=2, at_s=1.0, killed_s=1.0)
    assert stage_recovering(run, later), "killed, not back"
    assert not stage_recovering(run, time.monotonic() - 1), "overtime is bounded"
    run.fault.back_s = 4.0
    run.steps = [StepRecord(3.9, 10.0, "FULL"), StepRecord(4.1, 10.0, "EARLY_EXIT")]
    assert stage_recovering(run, later), "back, but no FULL answer since"
    run.steps.append(StepRecord(4.2, 10.0, "FULL"))
    assert not stage_recovering(run, later)
    assert not stage_recovering(DemoRun(0.02, fault=Fault(2, 1.0, error="no leader")), later)
