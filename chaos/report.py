"""A chaos run's report folder: record.json (every step, every fault window), verdicts.json
(a verdict per invariant and the run's figures), latency.png and modes.png (over time, the
fault windows shaded), and the text table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos.record import RunRecord
from chaos.verdicts import Verdict, summary

REPORT_FILES = ("record.json", "verdicts.json", "latency.png", "modes.png")
_MODE_ROWS = ("FULL", "EARLY_EXIT", "FALLBACK", "failed")


def write(record: RunRecord, verdicts: list[Verdict], directory: Path) -> dict[str, Any]:
    """Write every report file into `directory`; the verdicts.json content."""
    directory.mkdir(parents=True, exist_ok=True)
    record.save(directory / "record.json")
    result = {
        "scenario": record.scenario,
        "seed": record.seed,
        "ok": all(v.ok for v in verdicts),
        "verdicts": [v.to_json() for v in verdicts],
        "summary": summary(record),
        "faults": [f.__dict__ for f in record.faults],
        "report_dir": str(directory),
    }
    (directory / "verdicts.json").write_text(json.dumps(result, indent=1))
    _plots(record, directory)
    return result


def _shade(axis: Any, record: RunRecord) -> None:
    for window in record.faults:
        axis.axvspan(window.start_s, window.end_s, color="tab:red", alpha=0.15, lw=0)
        axis.text(
            window.start_s,
            1.0,
            window.fault,
            transform=axis.get_xaxis_transform(),
            fontsize=7,
            va="top",
            rotation=90,
            color="tab:red",
        )


def _plots(record: RunRecord, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(11, 4))
    for robot in range(record.robots):
        steps = [s for s in record.steps if s.robot == robot]
        ok = [s for s in steps if s.code == "OK"]
        bad = [s for s in steps if s.code != "OK"]
        axis.plot(
            [s.answered_s for s in ok],
            [s.latency_s * 1e3 for s in ok],
            ".",
            ms=2,
            label=f"robot {robot}",
        )
        axis.plot(
            [s.answered_s for s in bad], [s.latency_s * 1e3 for s in bad], "x", ms=5, color="black"
        )
    axis.axhline(record.step_deadline_s * 1e3, ls="--", color="grey", lw=0.8)
    axis.set(
        xlabel="seconds since the robots started",
        ylabel="latency (ms), x = failed attempt",
        title=f"{record.scenario} (seed {record.seed}): step latency",
        yscale="log",
    )
    _shade(axis, record)
    axis.legend(loc="upper right", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(directory / "latency.png", dpi=110)
    plt.close(fig)

    fig, axis = plt.subplots(figsize=(11, 3))
    for robot in range(record.robots):
        steps = [s for s in record.steps if s.robot == robot]
        rows = [
            _MODE_ROWS.index(s.mode if s.code == "OK" and s.mode in _MODE_ROWS else "failed")
            for s in steps
        ]
        axis.plot(
            [s.answered_s for s in steps],
            [r + 0.12 * (robot - record.robots / 2) / record.robots for r in rows],
            ".",
            ms=2,
        )
    axis.set_yticks(range(len(_MODE_ROWS)), _MODE_ROWS)
    axis.set(
        xlabel="seconds since the robots started",
        title=f"{record.scenario} (seed {record.seed}): serve mode",
    )
    _shade(axis, record)
    fig.tight_layout()
    fig.savefig(directory / "modes.png", dpi=110)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    """The verdicts and figures as text, for the terminal and docs/chaos.md."""
    s = result["summary"]
    lines = [
        f"scenario {result['scenario']} seed {result['seed']}: "
        f"{'PASS' if result['ok'] else 'FAIL'}",
        f"  attempts {s['attempts']}  acknowledged {s['acknowledged']}  modes {s['modes']}  "
        f"failed {s['failed'] or '{}'}",
        f"  worst attempt {s['worst_attempt_s'] * 1e3:.0f} ms  worst step wait (retries "
        f"included) {s['worst_step_wait_s'] * 1e3:.0f} ms  worst gap between answers "
        f"{s['worst_gap_s'] * 1e3:.0f} ms  recovery per fault (s) {s['recovery_s']}",
    ]
    for fault in result["faults"]:
        lines.append(
            f"  fault {fault['fault']} on {fault['target']} {fault['start_s']:.1f}-{fault['end_s']:.1f}s: {fault['detail']}"
        )
    for verdict in result["verdicts"]:
        mark = "ok  " if verdict["ok"] else "FAIL"
        note = f"  ({verdict['note']})" if verdict["note"] else ""
        lines.append(f"  {mark} {verdict['invariant']} [{verdict['checked']} checked]{note}")
        lines += [f"       {o}" for o in verdict["offending"]]
    lines.append(f"  report: {result['report_dir']}")
    return "\n".join(lines)
