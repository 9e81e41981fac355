"""The Prometheus scrape config of a running local cluster, with the jobs of
deploy/prometheus.yml; only the targets differ (`up` picks free ports, the systemd units fix
them). `actionmesh up` writes it into its work folder and prints where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COORDINATOR_JOB = "actionmesh-coordinator"
SHARD_JOB = "actionmesh-shards"


def scrape_config(
    coordinators: Sequence[str],
    shards: Sequence[str],
    interval_s: float = 15.0,
    rule_files: Sequence[str] = (),
) -> dict[str, Any]:
    """A prometheus.yml (as a dict) scraping these host:port metrics endpoints."""
    interval = f"{round(interval_s * 1000)}ms"
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": COORDINATOR_JOB, "static_configs": [{"targets": list(coordinators)}]},
            {"job_name": SHARD_JOB, "static_configs": [{"targets": list(shards)}]},
        ],
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return config
