"""deploy/overlays render with `kubectl kustomize`, every rendered object validates against
the Kubernetes schemas (kubernetes-validate, strict: no unknown field), and the objects keep
the issue's promises: headless coordinator Service, one StatefulSet per stage with required
anti-affinity, the downward-API advertise address and the three probes, a PDB per stage,
Redis with Sentinel, a 3-member etcd, the planner's placement on k3s-edge."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.cli import plan as plan_cli
from service.runtime import settings as am_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("k3s-edge", "dev")
K8S_VERSION = "1.32"  # the kubectl on our machines; K3s releases track upstream
KUBECTL = shutil.which("kubectl")
# Custom resources whose schema kubernetes-validate does not ship (checked by hand below).
CUSTOM_KINDS = {"PodMonitor"}

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on this machine")


def render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def test_every_rendered_object_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked == len(objects) - 1, overlay
    print(f"{overlay}: {len(objects)} objects rendered, {checked} validated")


def test_the_validator_rejects_a_broken_object(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Strict validation is live: an unknown field in a pod spec is refused."""
    _, objects = rendered
    broken = find(objects, "Deployment", "coordinator")
    broken = {**broken, "spec": {**broken["spec"], "replicaz": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_coordinators_sit_behind_a_headless_service(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    service = find(objects, "Service", "coordinator")
    assert service["spec"]["clusterIP"] == "None"
    pods = find(objects, "Deployment", "coordinator")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_each_stage_is_a_statefulset_that_advertises_its_pod_ip(
    rendered: tuple[str, list[dict[str, Any]]], stage: int
) -> None:
    _, objects = rendered
    shard = find(objects, "StatefulSet", f"shard-{stage}")
    pod = shard["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["shard", "--stage", str(stage)]
    assert args[args.index("--advertise-address") + 1] == "$(POD_IP):50051"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["startupProbe"]["grpc"]["port"] == 50051
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == shard["spec"]["selector"]["matchLabels"]
    budget = find(objects, "PodDisruptionBudget", f"shard-{stage}")
    assert budget["spec"]["selector"] == shard["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1


def test_redis_runs_with_sentinel_and_etcd_has_three_members(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    redis = find(objects, "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 3
    names = [c["name"] for c in redis["spec"]["template"]["spec"]["containers"]]
    assert names == ["redis", "sentinel"]
    etcd = find(objects, "StatefulSet", "etcd")
    assert etcd["spec"]["replicas"] == 3
    command = " ".join(etcd["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "etcd-2=http://etcd-2.etcd:2380" in command


def test_the_podmonitor_scrapes_every_actionmesh_pod(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    monitor = find(objects, "PodMonitor", "actionmesh")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet") and obj["metadata"]["name"] not in (
            "redis",
            "etcd",
        ):
            template = obj["spec"]["template"]
            assert template["metadata"]["labels"][expression["key"]] in expression["values"]
            ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
            assert endpoint["port"] in ports


def test_settings_in_the_configmap_are_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The TOML every pod reads loads as the coordinator's and the shard's settings."""
    _, objects = rendered
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("actionmesh-settings")
    ]
    text = config_map["data"]["actionmesh.toml"]
    for section, cls in (
        ("coordinator", am_settings.CoordinatorSettings),
        ("shard", am_settings.ShardSettings),
    ):
        loaded = cls.model_validate(tomllib.loads(text)[section])
        assert loaded.etcd is not None and loaded.flash_dir is not None


def test_k3s_edge_places_stages_as_the_planner_says() -> None:
    """placement.yaml is the planner's current output for nodes.yaml."""
    objects = render("k3s-edge")
    nodes = DEPLOY / "overlays" / "k3s-edge" / "nodes.yaml"
    result = plan_cli.build(am_settings.PlanSettings(nodes=nodes))
    for patch in result["patches"]:
        shard = find(objects, "StatefulSet", patch["metadata"]["name"])
        want = patch["spec"]["template"]["spec"]
        got = shard["spec"]["template"]["spec"]
        assert got["nodeSelector"] == want["nodeSelector"]
        assert got["containers"][0]["resources"] == want["containers"][0]["resources"]
        assert shard["spec"]["replicas"] == patch["spec"]["replicas"]
        claim = shard["spec"]["volumeClaimTemplates"][0]["spec"]
        assert claim["storageClassName"] == "local-path"
