"""Crash safety: kill -9 a process that snapshots, pushes and promotes, at many points. No
reader ever sees a partial version (locally or in S3), and a re-run completes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from checkpoint.blobstore import open_blobstore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import keygen, load_public_key
from checkpoint.remote import Remote, blob_key
from tests.integration.test_checkpoint_remote import bucket, endpoint, options  # noqa: F401

CHILD = r"""
import sys
from pathlib import Path
from checkpoint.blobstore import S3Options, open_blobstore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import load_private_key, load_public_key
from checkpoint.remote import Remote

flash_root, keys, url, endpoint, source, version = sys.argv[1:]
flash = LocalFlash(Path(flash_root), [load_public_key(Path(keys) / "checkpoint-signing.pub")])
store = open_blobstore(url, S3Options(endpoint_url=endpoint, region="us-east-1",
                       access_key_id="testing", secret_access_key="testing"))
print("ready", flush=True)
if version not in flash.versions():
    flash.create(Path(source), version, {"n_stages": 4}, creator="crash-test",
                 private_key=load_private_key(Path(keys) / "checkpoint-signing.key"))
    flash.set_current(version)
remote = Remote(store)
remote.push(flash, version)
remote.promote(version)
print("done", flush=True)
"""

ITERATIONS = 8


def run_child(args: list[str], kill_after_s: float | None) -> bool:
    """Run the child; with kill_after_s, SIGKILL it that long after it is ready. True when it
    finished on its own."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"ready", child.stderr.read() if child.stderr else ""
    if kill_after_s is None:
        _out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        return True
    try:
        child.wait(kill_after_s)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        return False
    return child.returncode == 0


def assert_nothing_partial(flash: LocalFlash, remote: Remote) -> None:
    for version in flash.versions():
        assert flash.check(version).ok, flash.check(version).problems
    committed = remote.versions()
    for version in committed:
        for entry in remote.manifest(version).files.values():
            assert remote.store.exists(blob_key(entry.sha256)), version
    current = remote.current()
    assert current is None or current in committed


@pytest.mark.parametrize("seed", [1])
def test_kill_9_at_many_points_never_leaves_a_partial_version(
    endpoint: str,  # noqa: F811
    bucket: str,  # noqa: F811
    tmp_path: Path,
    seed: int,
) -> None:
    rng = random.Random(seed)
    keys = tmp_path / "keys"
    keygen(keys)
    public: Ed25519PublicKey = load_public_key(keys / "checkpoint-signing.pub")
    flash = LocalFlash(tmp_path / "flash", [public])
    url = f"s3://{bucket}/crash"
    remote = Remote(open_blobstore(url, options(endpoint)))
    killed = 0
    for index in range(ITERATIONS):
        version = f"v{index}"
        source = tmp_path / f"src-{index}"
        source.mkdir()
        for part in range(4):
            (source / f"stage-{part}.safetensors").write_bytes(os.urandom(256 * 1024))
        args = [str(flash.root), str(keys), url, endpoint, str(source), version]
        finished = run_child(args, kill_after_s=rng.uniform(0.0, 0.35))
        killed += not finished
        assert_nothing_partial(flash, remote)
        run_child(args, kill_after_s=None)  # a re-run completes
        assert_nothing_partial(flash, remote)
        assert remote.current() == version and flash.current() == version
        flash.clean_incoming(older_than_s=0)
        assert not [p for p in flash.versions_dir.iterdir() if p.name.startswith(".")]
    assert killed >= 1
    fresh = LocalFlash(tmp_path / "fresh", [public])
    remote.pull(fresh, remote.current() or "")
    assert fresh.check(f"v{ITERATIONS - 1}").ok
