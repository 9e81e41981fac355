"""A remote store that accepts connections and never answers (a socket on 127.0.0.1 that this
test opens, accepts on and never replies to): every operation gives up within its deadline,
`ckpt list` exits 4 in seconds, and a shard with a verified version on its flash serves it at
once while it reconciles with the remote in the background."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from checkpoint.blobstore import S3Options, open_blobstore
from checkpoint.errors import StoreUnavailable
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import keygen, load_private_key, load_public_key
from checkpoint.remote import Remote
from service.local.child_process import ChildExited
from service.model import weights
from service.model.action_model import ActionModel
from tests.conftest import SMALL_MODEL
from tests.support.flash_shard import served_version, start_flash_shard
from tests.support.waiting import wait_for

SLACK_S = 2.0  # scheduling on 2 busy cores, process start-up aside


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of an endpoint that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials for this process and its children; no instance metadata, no AWS
    config files, and a default endpoint on 127.0.0.1."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)


def timed(action: object) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        action()  # type: ignore[operator]
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_every_operation_gives_up_within_the_deadline(
    silent: str, aws_env: None, tmp_path: Path
) -> None:
    short = open_blobstore(f"s3://ckpt/fleet?endpoint_url={silent}&deadline_s=2")
    source = tmp_path / "blob"
    source.write_bytes(b"x" * 1024)
    operations = {
        "get": lambda: short.get("CURRENT"),
        "head": lambda: short.exists("CURRENT"),
        "touch": lambda: short.touch("blobs/x"),
        "list": lambda: short.list("versions/"),
        "download": lambda: short.get_file("blobs/x", tmp_path / "out"),
        "put": lambda: short.put_bytes("blobs/y", b"y"),
        "upload": lambda: short.put_file("blobs/z", source),
        "put_if": lambda: short.put_if("CURRENT", b"{}", if_none_match=True),
        "delete": lambda: short.delete("blobs/y"),
    }
    for name, operation in operations.items():
        took, error = timed(operation)
        assert isinstance(error, StoreUnavailable), f"{name}: {error!r}"
        assert took < 2 + SLACK_S, f"{name} took {took:.1f}s, past its 2s deadline"

    # The default deadline (10 s); each retry counted.
    before = REGISTRY.get_sample_value("actionmesh_checkpoint_retries_total", {"operation": "list"})
    default = open_blobstore(f"s3://ckpt/fleet?endpoint_url={silent}")  # boto3 set-up: not timed
    took, error = timed(lambda: default.list(""))
    assert isinstance(error, StoreUnavailable) and "3 attempts" in str(error), error
    assert S3Options().deadline_s == 10.0 and took < 10 + SLACK_S, took
    after = REGISTRY.get_sample_value("actionmesh_checkpoint_retries_total", {"operation": "list"})
    assert after == (before or 0.0) + 2


def test_ckpt_list_gives_up_within_the_deadline_with_exit_4(
    silent: str, aws_env: None, tmp_path: Path
) -> None:
    LocalFlash(tmp_path / "flash")
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "ckpt",
        "list",
        "--flash-dir",
        str(tmp_path / "flash"),
        "--remote",
        f"s3://ckpt/fleet?endpoint_url={silent}",
        "--json",
    ]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 4, done.stdout + done.stderr
    assert took < 10 + SLACK_S + 2, f"ckpt list took {took:.1f}s"  # + interpreter start-up
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)
    assert error["kind"] == "StoreUnavailable" and "3 attempts" in error["error"], error


def signed_version(tmp: Path, seed: int, flash: LocalFlash) -> str:
    directory = tmp / f"weights-{seed}"
    info = weights.save(ActionModel(SMALL_MODEL.model_copy(update={"seed": seed})), directory)
    flash.create(
        directory,
        info.version,
        info.config.model_dump(),
        creator="test",
        private_key=load_private_key(tmp / "keys" / "checkpoint-signing.key"),
    )
    return info.version


def test_a_shard_serves_its_verified_flash_at_once_while_the_remote_does_not_answer(
    silent: str, aws_env: None, tmp_path: Path
) -> None:
    keygen(tmp_path / "keys")
    flash = LocalFlash(
        tmp_path / "flash", [load_public_key(tmp_path / "keys" / "checkpoint-signing.pub")]
    )
    v1 = signed_version(tmp_path, 1, flash)
    flash.set_current(v1)
    # A deadline long enough that waiting for the remote could not pass for "at once".
    child = start_flash_shard(
        tmp_path,
        "shard-unresponsive",
        "--remote",
        f"s3://ckpt/fleet?endpoint_url={silent}&deadline_s=60",
    )
    try:
        child.wait_ready(30)
        assert served_version(child) == v1
        said = "serving it at once; reconciling with the remote"
        wait_for(lambda: said in child.log_tail(80), 10, f"the log says {said!r}")
        assert "could not reconcile" not in child.log_tail(
            80
        )  # still waiting on the remote: not before it
    finally:
        child.stop()


def test_a_shard_moves_to_the_remote_current_once_reconciled(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    public = load_public_key(tmp_path / "keys" / "checkpoint-signing.pub")
    flash = LocalFlash(tmp_path / "flash", [public])
    operator = LocalFlash(tmp_path / "operator", [public])
    v1, v2 = signed_version(tmp_path, 1, flash), signed_version(tmp_path, 2, operator)
    flash.set_current(v1)
    remote = Remote(open_blobstore(f"file://{tmp_path / 'remote'}"))
    remote.push(operator, v2)
    remote.promote(v2)  # promoted while this node was down
    child = start_flash_shard(
        tmp_path, "shard-unresponsive", "--remote", f"file://{tmp_path / 'remote'}"
    )
    try:
        child.wait_ready(30)
        deadline = time.monotonic() + 30
        while served_version(child) != v2:
            assert time.monotonic() < deadline, child.log_tail(40)
            time.sleep(0.1)
        said = f"now serves {v2}, the remote CURRENT (was {v1})"
        wait_for(lambda: said in child.log_tail(40), 10, f"the log says {said!r}")
        assert flash.current() == v2
    finally:
        child.stop()


def test_a_shard_with_nothing_on_flash_gives_up_within_the_deadline(
    silent: str, aws_env: None, tmp_path: Path
) -> None:
    keygen(tmp_path / "keys")
    child = start_flash_shard(
        tmp_path,
        "shard-unresponsive",
        "--remote",
        f"s3://ckpt/fleet?endpoint_url={silent}&deadline_s=2",
    )
    started = time.monotonic()
    with pytest.raises(ChildExited) as exited:
        child.wait_ready(30)
    assert time.monotonic() - started < 20
    assert "no verified weights" in str(exited.value) and "Traceback" not in str(exited.value)
