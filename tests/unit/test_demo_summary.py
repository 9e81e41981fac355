"""The demo's summary from recorded ticks and steps: counts by command source and serve mode,
failed steps apart, and what the robot played while the killed stage was down."""

from __future__ import annotations

from actionmesh_client import Source
from service.bench.demo import DemoRun, Fault, StepRecord, TickRecord, summarize


def test_the_summary_counts_ticks_steps_and_the_fault() -> None:
    run = DemoRun(period_s=0.02)
    sources = [Source.IDLE] + [Source.CHUNK] * 6 + [Source.HOLD] * 2 + [Source.CHUNK]
    run.ticks = [TickRecord(i * 0.02, s, "FULL", late=i == 9) for i, s in enumerate(sources)]
    run.steps = [
        StepRecord(0.00, 30.0, "FULL"),
        StepRecord(0.05, 40.0, "UNAVAILABLE"),
        StepRecord(0.08, 50.0, "EARLY_EXIT"),
        StepRecord(0.16, 20.0, "FULL"),
    ]
    run.fault = Fault(stage=2, at_s=0.05, replica="stage-2-r0", killed_s=0.05, back_s=0.15)
    lines = summarize(run)
    assert lines[0].startswith("summary: 3 steps ok, 1 failed")
    assert lines[1].startswith("ticks: 10 played, CHUNK 7, HOLD 2, STOP 0, IDLE 1; 1 late")
    assert lines[2] == "chunks by serve mode: EARLY_EXIT 1, FULL 2"
    # Down from 0.05 s to 0.15 s: ticks at 0.06 .. 0.14 (5), the last one held.
    assert "2 steps after the kill not FULL" in lines[3]
    assert "the robot played 4 of 5 ticks from chunks" in lines[3]
    assert "FULL again 0.01 s after" in lines[3]


def test_a_fault_that_never_happened_says_why() -> None:
    run = DemoRun(period_s=0.02)
    run.fault = Fault(stage=1, at_s=5.0, error="stage 1 has no leader to kill")
    assert summarize(run)[-1] == "fault: none injected (stage 1 has no leader to kill)"
