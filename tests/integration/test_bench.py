"""`actionmesh bench` prints the JSON keys scripts rely on (figures are not asserted: noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def bench(tmp_path: Path, *flags: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "--log-level",
            "WARNING",
            "bench",
            "--json",
            "--port",
            "0",
            "--work-dir",
            str(tmp_path / "bench"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_bench_json_keys(tmp_path: Path) -> None:
    out = bench(tmp_path, "--steps", "20", "--concurrency", "1,4", "--throughput-s", "1")
    for key in ("inprocess_p50_ms", "inprocess_p99_ms", "cluster_p50_ms", "cluster_p99_ms"):
        assert out[key] > 0, key
    assert abs(out["overhead_p50_ms"] - (out["cluster_p50_ms"] - out["inprocess_p50_ms"])) < 0.01
    assert set(out["steps_per_s"]) == {"1", "4"} and all(v > 0 for v in out["steps_per_s"].values())


def test_bench_failover_json_keys(tmp_path: Path) -> None:
    out = bench(tmp_path, "--failover", "--failover-kills", "2", "--stages", "3")
    assert out["kills"] == 2
    assert 0 < out["failover_p50_s"] <= out["failover_max_s"]
    assert out["steps_ok"] > 0


def test_bench_degraded_json_keys(tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    tiny = ["--d-model", "32", "--n-heads", "2", "--n-layers", "3", "--tokens", "4"]
    short = ["--iterations", "3", "--head-iterations", "10", "--student-iterations", "10"]
    short += ["--memory-iterations", "4", "--memory-batch-episodes", "4", "--baseline-hidden", "8"]
    few = ["--distill-episodes", "4", "--eval-episodes", "4", "--output-dir", str(trained)]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", *tiny, *short, *few],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = bench(
        tmp_path,
        "--degraded",
        "--weights-dir",
        str(trained),
        "--steps",
        "20",
        "--degraded-episodes",
        "4",
    )
    modes = ["full", "early_exit_0", "early_exit_1", "fallback", "state_lost"]
    assert list(out["modes"]) == modes
    for name in modes:
        mode = out["modes"][name]
        assert set(mode) == {"error", "success", "p50_ms"}, name
        assert mode["error"] > 0 and 0 <= mode["success"] <= 1, name
        assert mode["p50_ms"] > 0, f"{name} was never served by the cluster"
    assert set(out["targets"]) == {
        "early_exit_0",
        "early_exit_1",
        "fallback",
        "state_lost",
        "full_success",
    }  # full_vs_baseline: the bench's episodes are not the ones the baseline was measured on
    baseline = out["baseline"]  # from the quality.json that `train` wrote
    assert set(baseline) == {"error", "success", "hidden", "episodes", "seed"}
    assert baseline["hidden"] == 8 and baseline["episodes"] == 4
