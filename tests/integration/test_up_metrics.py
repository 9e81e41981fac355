"""`actionmesh up` prints every process's metrics address and writes a prometheus.yml with
deploy/prometheus.yml's jobs and those targets, each of which serves /metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.support.prometheus import promtool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_up_prints_its_metrics_ports_and_writes_a_matching_prometheus_yml(
    tmp_path: Path,
) -> None:
    work_dir = tmp_path / "up"
    up = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", "0", "--work-dir", str(work_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    printed: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            printed.append(line)
            if "press Ctrl-C" in line:
                break
        (metrics_line,) = [line for line in printed if line.startswith("metrics ")]
        words = metrics_line.split()
        coordinators, shards = words[2].split(","), words[4].split(",")
        config = yaml.safe_load((work_dir / "prometheus.yml").read_text())
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
        deployed = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        assert list(jobs) == [j["job_name"] for j in deployed["scrape_configs"]]
        assert jobs == {"actionmesh-coordinator": coordinators, "actionmesh-shards": shards}
        assert len(shards) == 3
        checked = promtool("check", "config", str(work_dir / "prometheus.yml"))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for target in coordinators + shards:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
                assert b"actionmesh_build_info" in response.read()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
