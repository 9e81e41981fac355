"""Commands that compute nothing start without torch (about 2 s of CPU to import), and a bad
setting ends a real `actionmesh` process with one line and exit status 2, not a traceback.

Each test runs a fresh interpreter (`python -c`), the only way to see what a command imports;
no server is started and no socket is opened.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.model.config import ModelConfig
from service.model.weights_files import MANIFEST, STUDENT_FILE, stage_file

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

# Runs each argv through the CLI's main in one interpreter; prints each exit code, then
# whether torch was imported.
RUNNER = """
import json, sys
from service.cli.main import main

codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as exc:  # --help
        codes.append(exc.code)
for module in json.loads(sys.argv[2]):
    __import__(module)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""


def run_cli(runs: list[list[str]], imports: tuple[str, ...] = ()) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(runs), json.dumps(list(imports))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return out


def fake_weights(directory: Path, version: str) -> Path:
    """A weights directory as `ckpt create` sees it: model.json names the version; the
    tensor files are opaque bytes to a checkpoint, so any bytes do."""
    config = ModelConfig(n_stages=2)
    directory.mkdir(parents=True)
    manifest = {"version": version, "config": config.model_dump()}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    for name in [stage_file(k) for k in range(config.n_stages)] + [STUDENT_FILE]:
        (directory / name).write_bytes(version.encode() * 100)
    return directory


def test_help_imports_no_torch() -> None:
    commands = ["up", "demo", "bench", "ckpt", "status", "train", "export", "coordinator", "shard"]
    result = run_cli([["--help"]] + [[command, "--help"] for command in commands])
    assert result["codes"] == [0] * (1 + len(commands))
    assert result["torch"] is False


def test_ckpt_list_on_an_empty_flash_imports_no_torch(tmp_path: Path) -> None:
    (tmp_path / "empty" / "versions").mkdir(parents=True)  # list refuses a path with no flash
    result = run_cli([["ckpt", "list", "--flash-dir", str(tmp_path / "empty"), "--json"]])
    assert result == {"codes": [0], "torch": False}


def test_ckpt_actions_and_status_import_no_torch(tmp_path: Path) -> None:
    flash = ["--flash-dir", str(tmp_path / "flash"), "--insecure", "--log-level", "warning"]
    v1 = fake_weights(tmp_path / "w1", "m-one")
    v2 = fake_weights(tmp_path / "w2", "m-two")
    runs = [
        ["ckpt", "create", "--weights-dir", str(v1), *flash],
        ["ckpt", "promote", "m-one", *flash],
        ["ckpt", "create", "--weights-dir", str(v2), *flash],
        ["ckpt", "promote", "m-two", *flash],
        ["ckpt", "list", *flash],
        ["ckpt", "show", "m-two", *flash],
        ["ckpt", "verify", *flash],
        ["ckpt", "rollback", *flash],
    ]
    # What promote/rollback --etcd and status load only once they talk to etcd.
    imports = ("service.cli.status", "state.etcd_client", "state.etcd_routing")
    result = run_cli(runs, imports)
    assert result == {"codes": [0] * len(runs), "torch": False}
    assert (tmp_path / "flash" / "CURRENT").read_text().strip() == "m-one"  # rolled back


def test_invalid_settings_exit_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "coordinator", "--replica-wait-timeout-s", "0.8"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "actionmesh coordinator: invalid settings: --replica-wait-timeout-s 0.8 must be at "
        "most half of --redis-timeout-s 1.0"
    ]


def test_log_level_after_the_command_from_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "empty" / "versions").mkdir(parents=True)  # list refuses a path with no flash
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "ckpt",
            "list",
            "--flash-dir",
            str(tmp_path / "empty"),
            "--log-level",
            "debug",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["local"] == []


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`actionmesh plan ... | head -1`: the reader leaves early; no traceback, exit 1."""
    nodes = Path(__file__).resolve().parents[2] / "deploy" / "overlays" / "k3s-edge" / "nodes.yaml"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "plan", "--nodes", str(nodes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()  # before it writes anything
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
