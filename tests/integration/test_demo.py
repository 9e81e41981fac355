"""The README's demo command runs end to end and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

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
    work_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "demo",
            "--duration-s",
            "2",
            "--work-dir",
            str(work_dir),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "ACTIONMESH_PORT": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shown = re.search(r"^session (\S+) model ", result.stdout, re.MULTILINE)
    assert shown, result.stdout
    assert len(shown[1]) == SHORT_ID_CHARS, "the session id is a credential: print it short"
    assert re.search(r"summary: [1-9]\d* steps ok, 0 failed", result.stdout), result.stdout
    ticks = re.search(
        r"ticks: 100 played, CHUNK (\d+), HOLD \d+, STOP 0, IDLE (\d+)", result.stdout
    )
    assert ticks, result.stdout
    assert int(ticks[1]) > 50, "most ticks played a chunk's action"
    assert "chunks by serve mode: FULL" in result.stdout
    assert processes_mentioning(str(work_dir)) == [], "demo left processes running"


def test_demo_with_a_stage_killed_keeps_the_robot_playing_and_draws_the_timeline(
    tmp_path: Path,
) -> None:
    """The last stage's only replica killed 2 s in: the answers turn EARLY_EXIT, the robot
    keeps playing chunks (held between them when one is late), and the PNG is written."""
    work_dir, png = tmp_path / "demo", tmp_path / "timeline.png"
    result = subprocess.run(
        [
            *("nice", "-n", "10", sys.executable, "-m", "service.cli", "demo"),
            *("--duration-s", "6", "--kill-stage-at-s", "2", "--restart-after-s", "1"),
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
    ticks = re.search(r"ticks: 300 played, CHUNK (\d+), HOLD (\d+), STOP 0, IDLE (\d+)", out)
    assert ticks and int(ticks[1]) > 150, out
    played = re.search(r"while it was down the robot played (\d+) of (\d+) ticks", out)
    assert played and int(played[1]) > 0, out
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
