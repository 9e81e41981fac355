"""The README's demo command runs end to end and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path


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
    assert "summary: 100 steps ok, 0 failed" in result.stdout, result.stdout
    assert re.search(r"control loop: \d+ of 100 ticks late", result.stdout), result.stdout
    assert "FULL" in result.stdout
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
