"""Metrics as Prometheus itself sees them: `promtool check metrics` accepts every process's
/metrics; each role exports only its own series; a real Prometheus server (Debian's package,
tests/support/prometheus.py) scrapes a running cluster through the config `up` writes, loads
deploy/alerts.yml and evaluates every rule without error; and every expression of the Grafana
dashboard is valid PromQL naming only metrics the processes export."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chaos.reference import open_session, step
from service.local import prometheus_config
from service.local.embedded_redis import free_port
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2_grpc
from service.runtime import exposition
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.prometheus import binary, promtool
from tests.support.waiting import wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "actionmesh.json"
METRIC_NAME = re.compile(r"\bactionmesh_[a-z0-9_]+\b")
# Sample names each metric type exposes beyond its family name.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    settings = cluster_settings(tmp_path_factory.mktemp("prometheus"))
    with (
        LocalCluster(settings, SMALL_MODEL) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = session_pb2_grpc.SessionServiceStub(channel)
        sid = open_session(stub)
        for seq in range(1, 6):
            step(stub, sid, seq, torch.zeros(SMALL_MODEL.observation_dim))
        yield running


def raw_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def exposed(text: str) -> dict[str, str]:
    """Family name -> type of every family in a /metrics answer (with or without samples)."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def sample_names(families: dict[str, str]) -> set[str]:
    return {
        name + suffix for name, kind in families.items() for suffix in SUFFIXES.get(kind, ("",))
    }


def every_process(cluster: LocalCluster) -> dict[str, int]:
    assert cluster.coordinator is not None
    return {
        "coordinator": cluster.coordinator.ports["metrics_port"],
        **{s.name: s.ports["metrics_port"] for s in cluster.shards},
    }


def test_promtool_accepts_every_process_metrics(cluster: LocalCluster) -> None:
    for name, port in every_process(cluster).items():
        done = promtool("check", "metrics", stdin=raw_metrics(port))
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), name


def test_each_role_exports_its_own_series_and_the_build_and_model_version(
    cluster: LocalCluster,
) -> None:
    for name, port in every_process(cluster).items():
        role: exposition.Role = "coordinator" if name == "coordinator" else "shard"
        other: exposition.Role = "shard" if role == "coordinator" else "coordinator"
        ours = {n for n in exposed(raw_metrics(port)) if n.startswith("actionmesh_")}
        # Its own families all, shared ones whose module it imported (S3's only with S3).
        assert exposition.BY_ROLE[role] <= ours <= exposition.SHARED | exposition.BY_ROLE[role]
        assert not ours & exposition.BY_ROLE[other], name
        families = text_string_to_metric_families(raw_metrics(port))
        samples = {s.name: s.labels for f in families for s in f.samples}
        assert samples["actionmesh_build_info"]["role"] == role
        assert samples["actionmesh_model_version_info"]["version"], name


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus server scraping the cluster every second with deploy/alerts.yml loaded;
    its base URL."""
    work = tmp_path_factory.mktemp("prometheus-server")
    coordinators, shards = cluster.metrics_targets()
    config = prometheus_config.scrape_config(
        coordinators, shards, interval_s=1.0, rule_files=[str(DEPLOY / "alerts.yml")]
    )
    config_path = work / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = promtool("check", "config", str(config_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            str(binary("prometheus")),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "prometheus answers /-/ready")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def api(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_every_process_of_the_cluster(
    cluster: LocalCluster, prometheus: str
) -> None:
    n = 1 + len(cluster.shards)

    def all_up() -> bool:
        result = api(prometheus, "query", query='up{job=~"actionmesh-.*"} == 1')["result"]
        return len(result) == n

    wait_for(all_up, 60, f"all {n} targets up")
    answers = api(prometheus, "query", query="sum by (serve_mode) (actionmesh_answers_total)")
    assert {r["metric"]["serve_mode"]: float(r["value"][1]) for r in answers["result"]} == {
        "FULL": 5.0
    }
    forward = api(
        prometheus, "query", query="count by (stage) (actionmesh_shard_forward_items_total)"
    )
    assert len(forward["result"]) == SMALL_MODEL.n_stages


def test_prometheus_evaluates_every_alert_rule_without_error(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(prometheus, "rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    wait_for(evaluated, 60, "every rule evaluated once")
    rules = evaluated()
    assert rules is not None
    expected = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    names = {r["alert"] for g in expected["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == names
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []


def test_promtool_passes_the_alert_rules_and_their_tests() -> None:
    for args in (
        ("check", "rules", str(DEPLOY / "alerts.yml")),
        ("test", "rules", str(DEPLOY / "alerts.test.yml")),
        ("check", "config", str(DEPLOY / "prometheus.yml")),
    ):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_up_writes_the_jobs_of_deploy_prometheus_yml() -> None:
    deployed = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    written = prometheus_config.scrape_config(["127.0.0.1:1"], ["127.0.0.1:2"])
    assert [j["job_name"] for j in deployed["scrape_configs"]] == [
        j["job_name"] for j in written["scrape_configs"]
    ]


def dashboard_targets() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def test_the_dashboard_loads_with_a_query_in_every_panel() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    datasources = {v["name"] for v in board["templating"]["list"] if v["type"] == "datasource"}
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"].strip("${}") in datasources, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("latency", "answers", "sheds", "degraded", "resets", "leader", "redis", "etcd"):
        assert topic in titles, f"no panel about {topic}"


def test_every_dashboard_query_is_valid_promql_on_exported_metrics(
    cluster: LocalCluster, prometheus: str
) -> None:
    names: set[str] = set()
    for port in every_process(cluster).values():
        names |= sample_names(exposed(raw_metrics(port)))
    for title, expr in dashboard_targets():
        api(prometheus, "query", query=expr.replace("$__rate_interval", "1m"))  # parses
        unknown = set(METRIC_NAME.findall(expr)) - names
        assert not unknown, f"panel {title!r} names metrics nobody exports: {sorted(unknown)}"
