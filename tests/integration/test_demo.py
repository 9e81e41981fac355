"""The README's demo command runs end to end, with its fault by default or without
(--no-faults), and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from service.bench.demo import DEMO_WEIGHTS
from service.model.weights_files import read_info
from state.session import SHORT_ID_CHARS


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_demo_runs_and_stops_everything(tmp_path: Path) -> None:
    """A plain run (--no-faults) of the trained policy on the reach task: every answer FULL,
    the episodes judged, the timeline written to its default path in the current directory."""
    work_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "demo",
            "--duration-s",
            "2",
            "--no-faults",
            "--work-dir",
            str(work_dir),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "ACTIONMESH_PORT": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    shipped = read_info(DEMO_WEIGHTS).version
    assert f"serving {shipped}, the checkpoint shipped for the demo" in out, out
    shown = re.findall(r"^episode \d+: session (\S+) model (\S+)$", out, re.MULTILINE)
    assert len(shown) == 2, out  # 100 ticks: two episodes of 48, a session each
    assert all(len(s) == SHORT_ID_CHARS for s, _ in shown), "a session id is a credential"
    assert {model for _, model in shown} == {shipped}
    assert re.search(r"summary: [1-9]\d* steps ok, 0 failed", out), out
    ticks = re.search(r"ticks: 96 played, CHUNK (\d+), HOLD \d+, STOP 0, IDLE (\d+)", out)
    assert ticks, out
    assert int(ticks[1]) > 50, "most ticks played a chunk's action"
    assert re.search(r"ticks by serve mode: FULL \d+ ", out), out
    assert re.search(r"chunks by serve mode: FULL \d+$", out, re.MULTILINE), out
    assert re.search(r"task: [0-2] of 2 episodes reached the target", out), out
    assert "fault:" not in out
    png = tmp_path / "actionmesh-demo-timeline.png"
    assert f"timeline written to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert processes_mentioning(str(work_dir)) == [], "demo left processes running"


def test_demo_kills_a_stage_by_default_keeps_the_robot_playing_and_draws_the_timeline(
    tmp_path: Path,
) -> None:
    """By default the last stage's only replica is killed a quarter into the run and restarted:
    the answers turn EARLY_EXIT (labelled), the robot keeps playing chunks (held between them
    when one is late), FULL comes back (the run goes on until it does), episodes that played
    degraded answers are judged apart, and the PNG is written."""
    work_dir, png = tmp_path / "demo", tmp_path / "timeline.png"
    result = subprocess.run(
        [
            *("nice", "-n", "10", sys.executable, "-m", "service.cli", "demo"),
            *("--duration-s", "6", "--restart-after-s", "1"),
            *("--timeline", str(png), "--work-dir", str(work_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ACTIONMESH_PORT": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"fault: stage 2 leader stage-2-r0 killed at [\d.]+ s", out), out
    modes = re.search(r"chunks by serve mode: EARLY_EXIT (\d+), FULL (\d+)", out)
    assert modes and int(modes[1]) > 0 and int(modes[2]) > 0, out
    assert re.search(r"ticks by serve mode: EARLY_EXIT [1-9]\d*, FULL [1-9]\d*", out), out
    # 6 episodes of 48 ticks, and more until the restarted stage answers FULL again.
    ticks = re.search(r"ticks: (\d+) played, CHUNK (\d+), HOLD (\d+), STOP 0, IDLE (\d+)", out)
    assert ticks and int(ticks[1]) >= 288 and int(ticks[2]) > 150, out
    assert re.search(r"ready again at [\d.]+ s; .*; FULL again [\d.]+ s after$", out, re.M), out
    played = re.search(r"while it was down the robot played (\d+) of (\d+) ticks", out)
    assert played and int(played[1]) > 0, out
    task = re.search(r"task: (\d+) of \d+ episodes .* (\d+) of (\d+) played degraded ones", out)
    assert task and int(task[3]) > 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert processes_mentioning(str(work_dir)) == [], "demo left processes running"


def test_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    work_dir = tmp_path / "up"
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", "0", "--work-dir", str(work_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends at EOF if `up` dies before it is ready
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        assert any(line.startswith("coordinator 127.0.0.1:") for line in lines), lines
        assert len(processes_mentioning(str(work_dir))) >= 4  # redis + 3 shards + coordinator
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert processes_mentioning(str(work_dir)) == [], "up left processes running after Ctrl-C"
