"""The demo's timeline PNG: step latency coloured by serve mode (failed steps marked), each
tick's command source below it with each episode's outcome on the task, the fault's kill and
restart as vertical lines."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from actionmesh_client import Source
from service.bench.demo import DemoRun

_MODE_COLOURS = {"FULL": "tab:green", "EARLY_EXIT": "tab:orange", "FALLBACK": "tab:red"}
_SOURCE_ROWS = {Source.CHUNK: 3, Source.HOLD: 2, Source.STOP: 1, Source.IDLE: 0}
_EPISODE_ROW = 4
_SOURCE_COLOURS = {
    Source.CHUNK: "tab:green",
    Source.HOLD: "tab:orange",
    Source.STOP: "tab:red",
    Source.IDLE: "tab:gray",
}


def write_timeline(run: DemoRun, path: Path) -> None:
    fig = Figure(figsize=(11, 6), dpi=100)
    steps_ax, ticks_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for mode, colour in _MODE_COLOURS.items():
        mine = [s for s in run.steps if s.outcome == mode]
        if mine:
            steps_ax.scatter(
                [s.sent_s for s in mine], [s.latency_ms for s in mine], s=8, c=colour, label=mode
            )
    failed = [s for s in run.steps if s.outcome not in _MODE_COLOURS]
    if failed:
        steps_ax.scatter(
            [s.sent_s for s in failed],
            [s.latency_ms for s in failed],
            s=24,
            c="black",
            marker="x",
            label="failed (after retries)",
        )
    steps_ax.axhline(run.period_s * 1e3, color="gray", linestyle=":", label="control period")
    steps_ax.set_ylabel("step latency (ms)")
    steps_ax.set_yscale("log")
    steps_ax.set_title("actionmesh demo: steps by serve mode, and what the robot played each tick")
    for source, row in _SOURCE_ROWS.items():
        at = [t.at_s for t in run.ticks if t.source is source]
        ticks_ax.scatter(at, [row] * len(at), s=4, c=_SOURCE_COLOURS[source], marker="|")
    for episode in run.episodes:
        ticks_ax.plot([episode.started_s, episode.ended_s], [_EPISODE_ROW] * 2, c="lightgray", lw=1)
    for success, colour, marker, label in (
        (True, "tab:green", "o", "episode reached the target"),
        (False, "tab:red", "x", "episode missed it"),
    ):
        ends = [e.ended_s for e in run.episodes if e.success is success]
        ticks_ax.scatter(
            ends, [_EPISODE_ROW] * len(ends), s=20, c=colour, marker=marker, label=label
        )
    rows = {**{s.name: row for s, row in _SOURCE_ROWS.items()}, "EPISODE": _EPISODE_ROW}
    ticks_ax.set_yticks(list(rows.values()), list(rows))
    ticks_ax.set_ylim(-0.5, _EPISODE_ROW + 0.5)
    ticks_ax.set_xlabel("time since the robot started (s)")
    end_s = run.ticks[-1].at_s if run.ticks else 0.0
    ticks_ax.set_xlim(0.0, end_s + 0.2)
    fault = run.fault
    if fault is not None and fault.killed_s is not None:
        back = fault.back_s if fault.back_s is not None and fault.back_s <= end_s else None
        for ax in (steps_ax, ticks_ax):
            ax.axvline(fault.killed_s, color="red", linewidth=1.5)
            if back is not None:
                ax.axvline(back, color="blue", linewidth=1.5)
        steps_ax.plot([], [], color="red", label=f"stage {fault.stage} leader killed")
        restarted = "restarted" if back is not None else "restarted: after the run"
        steps_ax.plot([], [], color="blue", label=restarted)
    steps_ax.legend(loc="upper right", fontsize=8)
    if run.episodes:
        ticks_ax.legend(loc="lower right", fontsize=7, ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
