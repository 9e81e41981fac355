"""deploy/overlays render with `kubectl kustomize`, every rendered object validates against
the Kubernetes schemas (kubernetes-validate, strict: no unknown field), and the objects keep
the issue's promises: headless coordinator Service, one StatefulSet per stage with required
anti-affinity, the downward-API advertise address and the three probes, a PDB per stage,
Redis with Sentinel, a 3-member etcd, the planner's placement on k3s-edge."""

from __future__ import annotations

import argparse
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
from service.runtime.command_settings import PlanSettings
from service.runtime.tls import TlsFiles

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("k3s-edge", "dev")
MTLS_OVERLAYS = {"k3s-edge"}  # those that use deploy/components/mtls
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
def test_each_stage_is_a_statefulset_that_advertises_its_downward_api_address(
    rendered: tuple[str, list[dict[str, Any]]], stage: int
) -> None:
    """Plaintext (dev): the pod IP, and a gRPC startup probe. With the mtls component
    (k3s-edge): the pod's stable DNS name, which the shard certificate can name, and /ready
    (a gRPC probe cannot present a client certificate)."""
    overlay, objects = rendered
    shard = find(objects, "StatefulSet", f"shard-{stage}")
    pod = shard["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["shard", "--stage", str(stage)]
    advertised = args[args.index("--advertise-address") + 1]
    env = {e["name"]: e for e in container["env"]}
    if overlay in MTLS_OVERLAYS:
        assert advertised == f"$(POD_NAME).shard-{stage}.$(POD_NAMESPACE).svc.cluster.local:50051"
        assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert find(objects, "Service", f"shard-{stage}")["spec"]["publishNotReadyAddresses"]
        assert container["startupProbe"]["httpGet"]["path"] == "/ready"
        assert "grpc" not in container["startupProbe"]
    else:
        assert advertised == "$(POD_IP):50051"
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert container["startupProbe"]["grpc"]["port"] == 50051
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
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
    assert (
        "etcd-2=http://etcd-2.etcd:2380" in command or "etcd-2=https://etcd-2.etcd:2380" in command
    )


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
    result = plan_cli.build(PlanSettings(nodes=nodes))
    for patch in result["patches"]:
        shard = find(objects, "StatefulSet", patch["metadata"]["name"])
        want = patch["spec"]["template"]["spec"]
        got = shard["spec"]["template"]["spec"]
        assert got["nodeSelector"] == want["nodeSelector"]
        assert got["containers"][0]["resources"] == want["containers"][0]["resources"]
        assert shard["spec"]["replicas"] == patch["spec"]["replicas"]
        claim = shard["spec"]["volumeClaimTemplates"][0]["spec"]
        assert claim["storageClassName"] == "local-path"


def mounted_secret(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The Secret volume `container` mounts at `path`."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return dict(volume["secret"])


def secret_files(objects: list[dict[str, Any]], volume: dict[str, Any]) -> set[str]:
    """The file names a Secret volume shows (its `items`, else every key)."""
    if "items" in volume:
        return {item["path"] for item in volume["items"]}
    return set(find(objects, "Secret", volume["secretName"])["stringData"])


def pod_settings(
    objects: list[dict[str, Any]],
    container: dict[str, Any],
    cls: type[am_settings.S],
    section: str,
    scratch: Path,
) -> am_settings.S:
    """The settings the process in `container` starts with: the ConfigMap's TOML, then the
    pod's plain env values, merged as the CLI merges them."""
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("actionmesh-settings")
    ]
    toml = scratch / "actionmesh.toml"
    toml.write_text(config_map["data"]["actionmesh.toml"])
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    environ[am_settings.CONFIG_ENV] = str(toml)
    return am_settings.load(cls, section, argparse.Namespace(), environ)


@pytest.mark.parametrize("overlay", sorted(MTLS_OVERLAYS))
def test_with_mtls_every_process_reads_its_roles_tls_folder(overlay: str, tmp_path: Path) -> None:
    """Coordinators and shards start with --tls-dir on a Secret holding ca.pem and their
    roles' certificate and key (tls.TlsFiles' layout); etcd requires client and peer
    certificates; Redis and its Sentinels take the password the coordinators read."""
    objects = render(overlay)
    roles = {"coordinator": ("coordinator", "shard", "admin"), "shard": ("shard",)}
    workloads = [find(objects, "Deployment", "coordinator")] + [
        find(objects, "StatefulSet", f"shard-{k}") for k in range(3)
    ]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["args"][0]
        cls = (
            am_settings.CoordinatorSettings
            if command == "coordinator"
            else am_settings.ShardSettings
        )
        settings = pod_settings(objects, container, cls, command, tmp_path)
        assert settings.tls_dir is not None, workload["metadata"]["name"]
        files = secret_files(objects, mounted_secret(pod, container, str(settings.tls_dir)))
        for role in roles[command]:
            wanted = TlsFiles.of_role(settings.tls_dir, role)
            assert {wanted.ca.name, wanted.cert.name, wanted.key.name} <= files, role

    coordinator = workloads[0]["spec"]["template"]["spec"]
    settings = pod_settings(
        objects,
        coordinator["containers"][0],
        am_settings.CoordinatorSettings,
        "coordinator",
        tmp_path,
    )
    assert settings.auth != "off" and settings.secrets_dir is not None
    secrets = mounted_secret(coordinator, coordinator["containers"][0], str(settings.secrets_dir))
    assert "redis-password" in secret_files(objects, secrets)

    redis = find(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]
    for container in redis["containers"]:  # the start scripts read it from there
        auth = mounted_secret(redis, container, "/etc/redis-auth")
        assert auth["secretName"] == secrets["secretName"]
        assert secret_files(objects, auth) == {"redis-password"}

    etcd = find(objects, "StatefulSet", "etcd")["spec"]["template"]["spec"]
    (member,) = etcd["containers"]
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in member["command"][1:])
    assert flags["listen-client-urls"].startswith("https://")
    assert flags["initial-cluster"].count("https://") == 3
    assert "client-cert-auth" in flags and "peer-client-cert-auth" in flags
    tls_dir = str(Path(flags["cert-file"]).parent)
    files = secret_files(objects, mounted_secret(etcd, member, tls_dir))
    for flag in ("trusted-ca-file", "cert-file", "key-file", "peer-cert-file", "peer-key-file"):
        assert Path(flags[flag]).parent == Path(tls_dir) and Path(flags[flag]).name in files
    assert member["readinessProbe"]["httpGet"]["port"] == "metrics"
