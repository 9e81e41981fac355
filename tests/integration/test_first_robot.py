"""docs/first-robot.md's example runs as written: examples/first_robot.py against a local
cluster plays commands from FULL chunks at 50 Hz and ends cleanly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from service.local.local_cluster import LocalCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "first_robot.py"


def test_the_first_robot_example_plays_full_chunks(cluster: LocalCluster) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--address", cluster.address, "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("played "), done.stdout
    played = ast.literal_eval(last.removeprefix("played ").split(" events ")[0])
    ticks = played.get("source chunk", 0) + played.get("source hold", 0)
    ticks += played.get("source idle", 0) + played.get("source stop", 0)
    assert 100 <= ticks <= 160, played  # 3 s at 50 Hz, give or take a loaded machine
    assert played.get("source chunk", 0) >= ticks // 2, played
    assert played.get("mode FULL", 0) >= ticks // 2, played
