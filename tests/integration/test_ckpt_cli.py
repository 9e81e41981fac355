"""`actionmesh ckpt` end to end as ops scripts use it: exit codes and --json that parses; and a
shard that starts on a corrupt CURRENT serves the previous good version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from service.local.child_process import ChildProcess
from service.model import weights
from service.model.action_model import ActionModel
from service.proto import stage_pb2, stage_pb2_grpc
from tests.conftest import SMALL_MODEL
from tests.support.flash_shard import served_version, start_flash_shard
from tests.support.waiting import wait_for


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`actionmesh ckpt ARGV...` as a script runs it (default log level)."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "ckpt", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def ckpt(tmp: Path, action: str, *args: str, expect: int = 0) -> dict[str, Any]:
    common = [
        "--flash-dir",
        str(tmp / "flash"),
        "--remote",
        f"file://{tmp / 'remote'}",
        "--signing-key",
        str(tmp / "keys" / "checkpoint-signing.key"),
        "--trusted-keys",
        str(tmp / "keys" / "checkpoint-signing.pub"),
        "--key-dir",
        str(tmp / "keys"),
        "--json",
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "--log-level",
            "WARNING",
            "ckpt",
            action,
            *args,
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == expect, (
        f"{action}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def save_weights(tmp: Path, seed: int) -> tuple[Path, str]:
    directory = tmp / f"weights-{seed}"
    info = weights.save(ActionModel(SMALL_MODEL.model_copy(update={"seed": seed})), directory)
    return directory, info.version


def test_every_command_end_to_end(tmp_path: Path) -> None:
    keys = ckpt(tmp_path, "keygen")
    assert Path(keys["public_key"]).is_file()
    ckpt(tmp_path, "keygen", expect=1)  # refuses to overwrite a key
    first_dir, v1 = save_weights(tmp_path, 1)
    second_dir, v2 = save_weights(tmp_path, 2)
    created = ckpt(tmp_path, "create", "--weights-dir", str(first_dir))
    assert created["created"]["version"] == v1 and created["created"]["signed"]
    assert created["pushed"]["uploaded"]
    ckpt(tmp_path, "promote", v1)
    created2 = ckpt(tmp_path, "create", "--weights-dir", str(second_dir))
    assert created2["created"]["parent"] == v1
    promoted = ckpt(tmp_path, "promote", v2)
    assert promoted == {
        "current": v2,
        "previous": v1,
        "remote": True,
        "local": True,
        "cluster": False,  # no --etcd: the running cluster is not told
    }
    listed = ckpt(tmp_path, "list")
    assert sorted(listed["local"]) == sorted([v1, v2]) and listed["remote_current"] == v2
    assert ckpt(tmp_path, "show", v2)["version"] == v2
    assert ckpt(tmp_path, "verify")["verified"][v1]["ok"]
    rolled = ckpt(tmp_path, "rollback")
    assert rolled == {"current": v1, "previous": v2, "cluster": False}
    assert ckpt(tmp_path, "list")["local_current"] == v1
    ckpt(tmp_path, "show", "no-such-version", expect=1)

    # Delete the local copy, pull it back, verify: identical bytes.
    v2_dir = tmp_path / "flash" / "versions" / v2
    v2_files = {p.name: p.read_bytes() for p in v2_dir.iterdir()}
    shutil.rmtree(v2_dir)
    pulled = ckpt(tmp_path, "pull", v2)
    assert pulled["pulled"]["version"] == v2
    again = {p.name: p.read_bytes() for p in (tmp_path / "flash" / "versions" / v2).iterdir()}
    assert again == v2_files

    # Corrupt one file: verify fails (exit 1), reports and quarantines it.
    victim = next((tmp_path / "flash" / "versions" / v2).glob("stage-0.safetensors"))
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    failed = ckpt(tmp_path, "verify", v2, expect=1)
    assert failed["kind"] == "VerificationFailed"
    assert not (tmp_path / "flash" / "versions" / v2).exists()
    assert list((tmp_path / "flash" / "quarantine").iterdir())

    # gc keeps the newest and what the pointers name (CURRENT v1; remotely also the previous
    # v2, for rollback), and drops the rest (v3).
    (third_dir, v3), (fourth_dir, v4) = save_weights(tmp_path, 3), save_weights(tmp_path, 4)
    ckpt(tmp_path, "create", "--weights-dir", str(third_dir))
    ckpt(tmp_path, "create", "--weights-dir", str(fourth_dir))
    blobs = {p.name for p in (tmp_path / "remote" / "blobs").iterdir()}
    named = {f["sha256"] for v in (v1, v2, v4) for f in ckpt(tmp_path, "show", v)["files"].values()}
    assert named < blobs  # v3 has blobs of its own
    collected = ckpt(tmp_path, "gc", "--keep", "1")
    assert sorted(collected["remote"]["kept"]) == sorted([v1, v2, v4])
    assert collected["remote"]["deleted"] == [v3]
    assert sorted(collected["local"]["kept"]) == sorted([v1, v4])
    assert collected["local"]["deleted"] == [v3]
    assert v3 not in ckpt(tmp_path, "list")["remote"]
    # v3's blobs are younger than the grace period (an hour): a push in flight could be
    # about to name them. With none, --grace-s 0 removes them.
    assert {p.name for p in (tmp_path / "remote" / "blobs").iterdir()} == blobs
    collected = ckpt(tmp_path, "gc", "--keep", "1", "--grace-s", "0")
    assert collected["remote"]["deleted"] == [] and collected["local"]["deleted"] == []
    assert {p.name for p in (tmp_path / "remote" / "blobs").iterdir()} == named


def test_shard_on_a_corrupt_current_serves_the_previous_good_version(tmp_path: Path) -> None:
    ckpt(tmp_path, "keygen")
    first_dir, v1 = save_weights(tmp_path, 1)
    second_dir, v2 = save_weights(tmp_path, 2)
    ckpt(tmp_path, "create", "--weights-dir", str(first_dir))
    ckpt(tmp_path, "create", "--weights-dir", str(second_dir))
    ckpt(tmp_path, "promote", v2)
    (tmp_path / "flash" / "versions" / v2 / "stage-1.safetensors").write_bytes(b"truncated")
    shard = ChildProcess(
        "shard-ckpt",
        ChildProcess.actionmesh(
            "shard",
            "--stage",
            "1",
            "--port",
            "0",
            "--flash-dir",
            str(tmp_path / "flash"),
            "--trusted-keys",
            str(tmp_path / "keys" / "checkpoint-signing.pub"),
        ),
        tmp_path / "logs",
    ).start()
    try:
        shard.wait_ready(60)
        with grpc.insecure_channel(f"127.0.0.1:{shard.ports['grpc_port']}") as channel:
            info = stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)
        assert info.model_version == v1
        wait_for(lambda: "quarantined" in shard.log_tail(60), 10, "the shard says quarantined")
    finally:
        shard.stop()


def test_verify_with_wrong_or_missing_keys_reports_and_moves_nothing(tmp_path: Path) -> None:
    ckpt(tmp_path, "keygen")
    weights_dir, v1 = save_weights(tmp_path, 1)
    ckpt(tmp_path, "create", "--weights-dir", str(weights_dir))
    other = tmp_path / "other-keys"
    run("keygen", "--key-dir", str(other))
    flash = tmp_path / "flash"
    for keys in (["--trusted-keys", str(other / "checkpoint-signing.pub")], []):
        done = run("verify", "--flash-dir", str(flash), *keys, "--json")
        assert done.returncode == 1, done.stderr
        error = json.loads(done.stdout)
        assert error["kind"] == "VerificationFailed"
        assert "not vouched for" in error["error"] and "left in place" in error["error"]
        assert error["details"][v1]["quarantined_to"] is None
        assert [p.name for p in (flash / "versions").iterdir()] == [v1]
        assert list((flash / "quarantine").iterdir()) == []
    assert ckpt(tmp_path, "verify")["verified"][v1]["ok"]  # the right key: still good


def test_read_only_verbs_refuse_a_mistyped_flash_dir_and_an_unknown_version(
    tmp_path: Path,
) -> None:
    ckpt(tmp_path, "keygen")
    weights_dir, v1 = save_weights(tmp_path, 1)
    ckpt(tmp_path, "create", "--weights-dir", str(weights_dir))
    typo = tmp_path / "flahs"
    for argv in (["list"], ["show", v1], ["verify"], ["verify", v1], ["push", v1]):
        done = run(*argv, "--flash-dir", str(typo))
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr.count("\n") == 1 and "--flash-dir" in done.stderr, done.stderr
        assert not typo.exists(), f"{argv} created {typo}"

    flash = ["--flash-dir", str(tmp_path / "flash")]
    done = run("verify", "no-such-version", *flash, "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["kind"] == "NotFound" and "not found" in error["error"], error
    assert "quarantined" not in error["error"]


def test_a_malformed_remote_current_is_one_line_and_a_shard_serves_its_flash(
    tmp_path: Path,
) -> None:
    ckpt(tmp_path, "keygen")
    weights_dir, v1 = save_weights(tmp_path, 1)
    ckpt(tmp_path, "create", "--weights-dir", str(weights_dir))
    ckpt(tmp_path, "promote", v1)
    flags = [
        "--flash-dir",
        str(tmp_path / "flash"),
        "--remote",
        f"file://{tmp_path / 'remote'}",
        "--trusted-keys",
        str(tmp_path / "keys" / "checkpoint-signing.pub"),
    ]
    for current in (b"not json {", b'{"version": "../../etc", "previous": null}'):
        (tmp_path / "remote" / "CURRENT").write_bytes(current)
        for verb in ("pull", "list"):
            done = run(verb, *flags)
            assert (done.returncode, done.stdout) == (1, ""), done.stderr
            assert done.stderr.count("\n") == 1 and "remote CURRENT is malformed" in done.stderr
            as_json = run(verb, *flags, "--json")
            assert as_json.returncode == 1 and as_json.stdout.count("\n") == 1, as_json.stderr
            assert json.loads(as_json.stdout)["kind"] == "VerificationFailed"

    shard = start_flash_shard(tmp_path, "shard-ckpt", "--remote", f"file://{tmp_path / 'remote'}")
    try:
        shard.wait_ready(60)
        assert served_version(shard) == v1
        said = "remote CURRENT is malformed"
        wait_for(lambda: said in shard.log_tail(60), 10, f"the shard says {said!r}")
    finally:
        shard.stop()
