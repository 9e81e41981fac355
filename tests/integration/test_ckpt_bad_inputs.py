"""Every `actionmesh ckpt` verb fed bad inputs as a hurried operator types them: each ends in
one line (on stderr; with --json one JSON object on stdout), the documented exit code, and no
traceback. Real processes; the S3 cases talk to the moto server on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from checkpoint.blobstore import open_blobstore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import keygen, load_private_key, load_public_key
from checkpoint.remote import Remote
from service.model.config import ModelConfig
from service.model.weights_files import MANIFEST
from service.runtime.command_settings import CKPT_ACTIONS
from tests.integration.test_checkpoint_remote import endpoint  # noqa: F401 (the moto server)

V1 = "m-bad-inputs-1"
LONG_ID = "v" * 20_000
MAX_LINE = 600  # no line quotes a 20 KB input whole


@dataclass(frozen=True)
class Case:
    argv: str  # `{name}` fields are paths in the world below; split on spaces
    code: int
    says: str  # a fragment of the one error line

    def args(self, world: dict[str, str]) -> list[str]:
        return [part.format(**world) for part in self.argv.split()]


FLASH = "--flash-dir {flash} --trusted-keys {pub}"
REMOTE = FLASH + " --remote {remote}"

CASES = [
    # keygen
    Case("keygen --key-dir {keys}", 1, "exists"),
    Case("keygen --key-dir {garbage_key}", 1, "garbage.key"),
    # create: keys that are not what the flag wants, weights that are not weights
    Case("create --weights-dir {weights} --signing-key {garbage_key} " + FLASH, 1, "not a PEM"),
    Case("create --weights-dir {weights} --signing-key {empty_key} " + FLASH, 1, "is empty"),
    Case("create --weights-dir {weights} --signing-key {pub} " + FLASH, 1, "is a public key"),
    Case("create --weights-dir {weights} --signing-key {nowhere} " + FLASH, 1, "cannot read"),
    Case("create --weights-dir {nowhere} --signing-key {key} " + FLASH, 1, "not a weights dir"),
    Case("create --weights-dir {garbage_weights} --signing-key {key} " + FLASH, 1, "model.json"),
    Case("create other --weights-dir {weights} --signing-key {key} " + FLASH, 1, "not other"),
    # trusted keys that are not public keys
    Case("list --flash-dir {flash} --trusted-keys {garbage_key}", 1, "not a PEM public key"),
    Case("list --flash-dir {flash} --trusted-keys {empty_key}", 1, "is empty"),
    Case("list --flash-dir {flash} --trusted-keys {key}", 1, "is a private key"),
    Case("list --flash-dir {flash} --trusted-keys {nowhere}", 1, "cannot read"),
    # remote URLs that cannot name a store
    Case("list " + FLASH + " --remote s3://", 1, "names no bucket"),
    Case("list " + FLASH + " --remote s3:///prefix", 1, "names no bucket"),
    Case("list " + FLASH + " --remote ftp://host/x", 1, "unsupported blob store URL"),
    Case("list " + FLASH + " --remote file://otherhost/x", 1, "file:///absolute/path"),
    Case("list " + FLASH + " --remote file:relative/x", 1, "file:///absolute/path"),
    Case("list " + FLASH + " --remote s3://bucket/p?colour=red", 1, "unknown S3 URL param"),
    Case("list " + FLASH + " --remote s3://bucket/p?endpoint_url=notaurl", 1, "endpoint_url"),
    Case("list " + FLASH + " --remote s3://bucket/p?endpoint_url=http://h:x", 1, "endpoint_url"),
    Case("list " + FLASH + " --remote s3://bucket/p?deadline_s=0.1", 1, "leaves no time"),
    Case("list " + FLASH + " --remote s3://bucket/p?deadline_s=soon", 1, "not a number"),
    Case("list " + FLASH + " --remote s3://Bad_Bucket/p", 1, "invalid S3 bucket name"),
    Case("list " + FLASH + " --remote s3://ab/p", 1, "invalid S3 bucket name"),
    Case("list " + FLASH + " --remote {no_bucket}", 1, "does not exist"),
    Case("pull " + FLASH + " --remote {no_bucket}", 1, "does not exist"),
    Case("push " + V1 + " " + FLASH + " --remote {no_bucket}", 1, "does not exist"),
    # read-only verbs on a mistyped flash
    Case("list --flash-dir {typo}", 1, "--flash-dir"),
    Case("show " + V1 + " --flash-dir {typo}", 1, "--flash-dir"),
    Case("verify --flash-dir {typo}", 1, "--flash-dir"),
    # version ids that are not plain names, or not there
    Case("show ../x " + FLASH, 1, "invalid version id"),
    Case("show a/b " + FLASH, 1, "invalid version id"),
    Case("show " + LONG_ID + " " + FLASH, 1, "invalid version id"),
    Case("show " + FLASH, 1, "needs a VERSION"),
    Case("show no-such-version " + REMOTE, 1, "not in the remote store"),
    Case("verify ../../etc " + FLASH, 1, "invalid version id"),
    Case("verify no-such-version " + FLASH, 1, "not found"),
    Case("push a/b " + REMOTE, 1, "invalid version id"),
    Case("push no-such-version " + REMOTE, 1, "not on local flash"),
    Case("push " + V1 + " " + FLASH, 1, "no remote store configured"),
    Case("pull .. " + REMOTE, 1, "invalid version id"),
    Case("pull no-such-version " + REMOTE, 1, "not in the remote store"),
    Case("promote ../x " + REMOTE, 1, "invalid version id"),
    Case("promote no-such-version " + REMOTE, 1, "not in the remote store"),
    Case("promote " + REMOTE, 1, "needs a VERSION"),
    # remote pointers that are unset or malformed
    Case("rollback " + FLASH + " --remote {empty_remote}", 1, "nothing to roll back"),
    Case("pull " + FLASH + " --remote {empty_remote}", 1, "remote CURRENT is unset"),
    Case("pull " + FLASH + " --remote {bad_remote}", 1, "remote CURRENT is malformed"),
    Case("rollback " + FLASH + " --remote {bad_remote}", 1, "remote CURRENT is malformed"),
    Case("gc " + FLASH + " --remote {bad_remote}", 1, "remote CURRENT is malformed"),
    Case("list " + FLASH + " --remote {escape_remote}", 1, "remote CURRENT is malformed"),
    Case("gc " + FLASH + " --remote ftp://host/x", 1, "unsupported blob store URL"),
]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    endpoint: str,  # noqa: F811
) -> Iterator[dict[str, str]]:
    """A node with keys, a signed version on its flash pushed to a file:// remote and
    promoted; and the garbage an operator may point a flag at."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    private, public = keygen(tmp / "keys")
    source = tmp / "parts"
    source.mkdir()
    (source / "stage-0.safetensors").write_bytes(b"weights" * 100)
    flash = LocalFlash(tmp / "flash", [load_public_key(public)])
    flash.create(source, V1, {"n_stages": 1}, creator="test", private_key=load_private_key(private))
    remote = Remote(open_blobstore(f"file://{tmp / 'remote'}"))
    remote.push(flash, V1)
    remote.promote(V1)
    for name, current in (
        ("bad-remote", b"not json {"),
        ("escape-remote", b'{"version": "../../etc"}'),
    ):
        Remote(open_blobstore(f"file://{tmp / name}")).store.put_bytes("CURRENT", current)
    (tmp / "empty-remote").mkdir()
    (tmp / "garbage.key").write_bytes(b"garbage")
    (tmp / "empty.key").write_bytes(b"")
    weights = tmp / "weights"
    weights.mkdir()
    config = ModelConfig(n_stages=1).model_dump()
    (weights / MANIFEST).write_text(json.dumps({"version": "m-weights", "config": config}))
    (tmp / "garbage-weights").mkdir()
    (tmp / "garbage-weights" / MANIFEST).write_text("{not json")
    yield {
        "flash": str(tmp / "flash"),
        "typo": str(tmp / "flahs"),
        "keys": str(tmp / "keys"),
        "key": str(private),
        "pub": str(public),
        "garbage_key": str(tmp / "garbage.key"),
        "empty_key": str(tmp / "empty.key"),
        "nowhere": str(tmp / "nowhere"),
        "weights": str(weights),
        "garbage_weights": str(tmp / "garbage-weights"),
        "remote": f"file://{tmp / 'remote'}",
        "empty_remote": f"file://{tmp / 'empty-remote'}",
        "bad_remote": f"file://{tmp / 'bad-remote'}",
        "escape_remote": f"file://{tmp / 'escape-remote'}",
        "no_bucket": f"s3://no-such-bucket/fleet?endpoint_url={endpoint}",
    }


def s3_env(tmp: Path) -> dict[str, str]:
    """Test credentials, no instance metadata, no AWS config files, and (should a case ever
    reach the network without its own endpoint_url) a default endpoint on 127.0.0.1."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def ckpt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "ckpt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def check(case: Case, world: dict[str, str], env: dict[str, str]) -> list[str]:
    """What is wrong with how `case` ended, in text and in --json; [] when nothing."""
    args = case.args(world)
    verb = args[0]
    problems = []
    text, as_json = ckpt(args, env), ckpt([*args, "--json"], env)
    for mode, done in (("text", text), ("json", as_json)):
        if "Traceback" in done.stderr:
            problems.append(f"{mode}: traceback: {done.stderr[-300:]}")
        if done.returncode != case.code:
            problems.append(f"{mode}: exit {done.returncode}, not {case.code}")
    lines = text.stderr.splitlines()
    if text.stdout or len(lines) != 1 or not lines[0].startswith(f"actionmesh ckpt {verb}: "):
        problems.append(f"text: not one line on stderr: {text.stdout[-200:]!r} {lines[-3:]}")
    elif case.says not in lines[0] or len(lines[0]) > MAX_LINE:
        problems.append(f"text: {lines[0][:MAX_LINE]!r} does not say {case.says!r} briefly")
    out = as_json.stdout.splitlines()
    try:
        error = json.loads(out[0]) if len(out) == 1 else None
    except ValueError:
        error = None
    if not isinstance(error, dict) or set(error) != {"error", "kind", "details"}:
        problems.append(f"json: not one error object on stdout: {as_json.stdout[-300:]!r}")
    elif case.says not in error["error"]:
        problems.append(f"json: {error['error'][:MAX_LINE]!r} does not say {case.says!r}")
    return [f"ckpt {' '.join(args)[:120]}: {p}" for p in problems]


def test_every_verb_ends_bad_input_with_one_line_and_its_exit_code(
    world: dict[str, str], tmp_path: Path
) -> None:
    assert {c.argv.split()[0] for c in CASES} >= set(CKPT_ACTIONS)
    env = s3_env(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        found = [
            p for problems in pool.map(lambda c: check(c, world, env), CASES) for p in problems
        ]
    assert not Path(world["typo"]).exists(), "a read-only verb created the mistyped flash"
    assert found == [], "\n".join(found)
