"""`actionmesh bench` prints the JSON keys scripts rely on (figures are not asserted: noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


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
    out = bench(tmp_path, "--steps", "20", "--concurrency", "1,4", "--throughput-s", "1", "--tls")
    for key in (
        "inprocess_p50_ms",
        "inprocess_p99_ms",
        "cluster_p50_ms",
        "cluster_p99_ms",
        "stream_p50_ms",
        "stream_p99_ms",
        # --tls: a TLS twin of the cluster, stepped in rounds alternating with the plaintext one
        "tls_cluster_p50_ms",
        "tls_cluster_p99_ms",
        "tls_stream_p50_ms",
        "tls_stream_p99_ms",
        "tls_baseline_cluster_p50_ms",
        "tls_baseline_stream_p50_ms",
    ):
        assert out[key] > 0, key
    tls_cost = out["tls_cluster_p50_ms"] - out["tls_baseline_cluster_p50_ms"]
    assert abs(out["tls_cost_p50_ms"] - tls_cost) < 0.01
    assert abs(out["overhead_p50_ms"] - (out["cluster_p50_ms"] - out["inprocess_p50_ms"])) < 0.01
    assert abs(out["overhead_p99_ms"] - (out["cluster_p99_ms"] - out["inprocess_p99_ms"])) < 0.01
    parts = out["overhead_breakdown_ms"]
    per_stage = (
        "stage_transport",
        "stage_compute_beyond_inprocess",
        "stage_compute_after_idle",
    )
    assert all(len(parts[key]) == out["stages"] for key in per_stage)
    # Parts the coordinator times itself are positive (it reported them); none is missing.
    assert parts["redis_load"] > 0 and parts["redis_commit"] > 0 and parts["reply_encode"] > 0
    assert parts["robot_coordinator_hop"] > 0 and all(t > 0 for t in parts["stage_transport"])
    assert set(out["steps_per_s"]) == {"1", "4"} and all(v > 0 for v in out["steps_per_s"].values())
    footprint = out["shard_footprint"]
    for runtime in ("torch", "onnx", "onnx-int8"):
        f = footprint[runtime]
        assert f["start_s"] > 0 and f["params_mib"] > 0, runtime
        assert abs(f["rss_over_params_mib"] - (f["peak_rss_mib"] - f["params_mib"])) < 0.2, runtime
    assert out["shard_rss_over_params_mib"] == footprint["onnx"]["rss_over_params_mib"]
    assert out["shard_start_s"] == footprint["onnx"]["start_s"]
    # file sizes, not timings: int8 linear layers make the weights at least 3x smaller
    assert out["int8_weights_ratio"] >= 3, footprint


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
    few.append("--no-cluster-latency")  # the bench measures it
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
    modes = ["full", "early_exit_0", "early_exit_1", "fallback", "state_lost", "full_int8"]
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
    int8 = out["int8"]
    assert int8["weights_ratio"] > 1
    assert set(int8["in_process_p50_ms"]) == {"onnx", "onnx_int8"}
    ratio = out["modes"]["full_int8"]["error"] / out["modes"]["full"]["error"]
    assert int8["error_ratio"] == round(ratio, 4)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pinned needs 2 cores")
def test_bench_pinned_json_keys(tmp_path: Path) -> None:
    out = bench(tmp_path, "--pinned", "--throughput-s", "1")
    assert out["stages"] == 2 and out["sessions"] == 16 and len(out["shard_cores"]) == 2
    assert out["max_inflight_batches"] == 3
    assert out["inprocess_one_core_steps_per_s"] > 0 and out["cluster_pinned_steps_per_s"] > 0
    ratio = out["cluster_pinned_steps_per_s"] / out["inprocess_one_core_steps_per_s"]
    assert abs(out["pipeline_speedup"] - ratio) < 0.01


def test_bench_floors_json_keys(tmp_path: Path) -> None:
    out = bench(tmp_path, "--floors", "--steps", "40")
    assert out["floor_stages"] == 3 and out["floor_activation_bytes"] == 32 * 256 * 4
    parts = (
        "floor_unary_round_trip_ms",
        "floor_stream_round_trip_ms",
        "floor_stream_round_trip_after_compute_ms",
        "floor_stages_in_turn_ms",
        "floor_stages_chained_ms",
        "floor_redis_round_trip_ms",
    )
    for key in parts:
        assert out[key] > 0, key
    cpu = out["floor_cpu_us_per_call"]
    # the CPU of each kind of hop; not of the stage-sized work one server does
    hops = [key for key in parts if key != "floor_stream_round_trip_after_compute_ms"]
    assert set(cpu) == {key.removeprefix("floor_").removesuffix("_ms") for key in hops}
    assert all(us >= 0 for us in cpu.values()), cpu
    robot, redis = out["floor_unary_round_trip_ms"], out["floor_redis_round_trip_ms"]
    in_turn = robot + out["floor_stages_in_turn_ms"] + redis
    chained = robot + out["floor_stages_chained_ms"] + redis
    assert abs(out["floor_step_overhead_ms"] - in_turn) < 0.01
    assert abs(out["floor_step_overhead_chained_ms"] - chained) < 0.01
    computing = robot + 3 * out["floor_stream_round_trip_after_compute_ms"] + redis
    assert abs(out["floor_step_overhead_computing_ms"] - computing) < 0.01
    # the floor servers are stopped with the bench
    pids = [
        json.loads(p.read_text())["pid"] for p in (tmp_path / "bench").glob("floor-*.ready.json")
    ]
    assert len(pids) == 3 and not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
