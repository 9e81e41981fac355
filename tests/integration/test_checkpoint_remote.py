"""Checkpoints against S3: the moto server over real HTTP on 127.0.0.1 and a free port,
started as a child process. No mocks of boto3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from safetensors.torch import load_file, save_file

from chaos.moto_s3 import MotoS3
from checkpoint import gc
from checkpoint.blobstore import S3Options, open_blobstore
from checkpoint.errors import PreconditionFailed, StoreUnavailable, VerificationFailed
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import build_manifest, sign
from checkpoint.remote import Remote, blob_key, ensure_local
from service.runtime import tracing

CONFIG = {"d_model": 64, "n_stages": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with MotoS3(tmp_path_factory.mktemp("moto")) as s3:
        yield s3.endpoint


def options(endpoint: str, **overrides: object) -> S3Options:
    base: dict[str, object] = {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    return S3Options(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def bucket(endpoint: str, request: pytest.FixtureRequest) -> str:
    name = "ckpt-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def remote_for(endpoint: str, bucket: str, **overrides: object) -> Remote:
    return Remote(open_blobstore(f"s3://{bucket}/fleet-a", options(endpoint, **overrides)))


def snapshot(flash: LocalFlash, source: Path, key: Ed25519PrivateKey, version: str) -> None:
    manifest = build_manifest(source, version, CONFIG, creator="test", parent=flash.current())
    flash.add(source, sign(manifest, key))
    flash.set_current(version)


def fake_parts(directory: Path, size: int = 2048) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("stage-0.safetensors", "stage-1.safetensors", "student.safetensors"):
        (directory / name).write_bytes(os.urandom(size))
    return directory


def test_round_trip_with_a_real_safetensors_file(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    source = fake_parts(tmp_path / "src")
    tensors = {"w": torch.randn(16, 8), "b": torch.arange(8, dtype=torch.float32)}
    save_file(tensors, str(source / "stage-0.safetensors"))
    flash = LocalFlash(tmp_path / "node-a", [key.public_key()])
    snapshot(flash, source, key, "v1")
    remote = remote_for(endpoint, bucket)
    remote.push(flash, "v1")
    remote.promote("v1")

    original = {p.name: p.read_bytes() for p in flash.path("v1").iterdir()}
    flash.remove("v1")
    assert flash.versions() == []

    version = remote.current()
    assert version == "v1"
    remote.pull(flash, version)
    assert flash.verify(version).ok
    assert {p.name: p.read_bytes() for p in flash.path("v1").iterdir()} == original
    loaded = load_file(str(flash.path("v1") / "stage-0.safetensors"))
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)


def test_content_addressing_skips_unchanged_blobs(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    source = fake_parts(tmp_path / "src")
    snapshot(flash, source, key, "v1")
    remote = remote_for(endpoint, bucket)
    assert len(remote.push(flash, "v1").uploaded) == 3
    assert remote.push(flash, "v1").uploaded == ()  # a re-run is a no-op
    (source / "student.safetensors").write_bytes(os.urandom(100))
    snapshot(flash, source, key, "v2")
    pushed = remote.push(flash, "v2")
    assert pushed.uploaded == ("student.safetensors",) and len(pushed.skipped) == 2
    assert remote.versions() == ["v1", "v2"]
    assert len(remote.store.list("blobs/")) == 4


def test_multipart_upload_for_large_files(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    mib = 1024 * 1024
    remote = remote_for(
        endpoint, bucket, multipart_threshold_bytes=5 * mib, multipart_chunksize_bytes=5 * mib
    )
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    source = tmp_path / "src"
    source.mkdir()
    (source / "stage-0.safetensors").write_bytes(os.urandom(6 * mib))
    snapshot(flash, source, key, "big")
    remote.push(flash, "big")
    entry = flash.manifest("big").files["stage-0.safetensors"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    head = s3.head_object(Bucket=bucket, Key=f"fleet-a/{blob_key(entry.sha256)}")
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    other = LocalFlash(tmp_path / "other", [key.public_key()])
    remote.pull(other, "big")
    assert other.verify("big").ok


def test_pull_refuses_bad_signature_and_corrupt_blob(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    snapshot(flash, fake_parts(tmp_path / "src"), key, "v1")
    remote = remote_for(endpoint, bucket)
    remote.push(flash, "v1")

    stranger = LocalFlash(tmp_path / "stranger", [Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(VerificationFailed, match="signature"):
        remote.pull(stranger, "v1")

    entry = flash.manifest("v1").files["stage-1.safetensors"]
    remote.store.put_bytes(blob_key(entry.sha256), b"x" * entry.size)  # bit rot in the bucket
    fresh = LocalFlash(tmp_path / "fresh", [key.public_key()])
    with pytest.raises(VerificationFailed, match="sha256"):
        remote.pull(fresh, "v1")
    assert fresh.versions() == [] and not list(fresh.versions_dir.iterdir())


def test_two_concurrent_promotes_exactly_one_wins(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    remote = remote_for(endpoint, bucket)
    for version in ("v1", "v2", "v3"):
        snapshot(flash, fake_parts(tmp_path / f"src-{version}"), key, version)
        remote.push(flash, version)
    remote.promote("v1")

    # Two operators, each with their own client, both saw CURRENT=v1.
    operators = [remote_for(endpoint, bucket), remote_for(endpoint, bucket)]
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def promote(remote: Remote, version: str) -> None:
        barrier.wait()
        try:
            outcomes[version] = remote.promote(version, expected="v1", by=version)
        except PreconditionFailed as exc:
            outcomes[version] = exc

    threads = [
        threading.Thread(target=promote, args=(op, v))
        for op, v in zip(operators, ("v2", "v3"), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    losers = [v for v, out in outcomes.items() if isinstance(out, PreconditionFailed)]
    winners = [v for v in outcomes if v not in losers]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert remote.current() == winners[0]
    assert "someone else promoted" in str(outcomes[losers[0]]) or "lost a race" in str(
        outcomes[losers[0]]
    )

    # The raw conditional write: a stale etag loses, If-None-Match on an existing key loses.
    pointer = remote.pointer()
    assert pointer is not None
    remote.promote("v1")
    with pytest.raises(PreconditionFailed, match="changed since it was read"):
        remote.store.put_if("CURRENT", b"{}", if_match=pointer.etag)
    with pytest.raises(PreconditionFailed):
        remote.store.put_if("CURRENT", b"{}", if_none_match=True)
    assert remote.rollback().version == winners[0]


def test_conditional_put_race_on_s3_exactly_one_wins(endpoint: str, bucket: str) -> None:
    stores = [open_blobstore(f"s3://{bucket}/race", options(endpoint)) for _ in range(8)]
    stores[0].put_bytes("CURRENT", b"start")
    found = stores[0].get("CURRENT")
    assert found is not None
    barrier = threading.Barrier(len(stores))
    wins: list[int] = []
    losses: list[PreconditionFailed] = []

    def write(index: int) -> None:
        barrier.wait()
        try:
            stores[index].put_if("CURRENT", b"%d" % index, if_match=found.etag)
            wins.append(index)
        except PreconditionFailed as exc:
            losses.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (len(wins), len(losses)) == (1, 7)
    assert stores[0].get("CURRENT") is not None
    assert stores[0].get("CURRENT").data == b"%d" % wins[0]  # type: ignore[union-attr]


def test_gc_remote_keeps_pinned_and_drops_unreferenced_blobs(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    remote = remote_for(endpoint, bucket)
    for index in range(1, 6):
        snapshot(flash, fake_parts(tmp_path / f"src-{index}"), key, f"v{index}")
        remote.push(flash, f"v{index}")
    remote.promote("v2")
    remote.promote("v3")  # v2 is now CURRENT's previous: the rollback target
    # No grace period (no push runs): v4's blobs, a moment old, go with it.
    decided = gc.collect_remote(remote, keep_newest=1, in_use=["v1"], grace_s=0)
    assert decided.keep == ("v1", "v2", "v3", "v5") and decided.delete == ("v4",)
    assert remote.versions() == ["v1", "v2", "v3", "v5"]
    assert len(remote.store.list("blobs/")) == 4 * 3
    other = LocalFlash(tmp_path / "other", [key.public_key()])
    for version in remote.versions():
        remote.pull(other, version)


def gc_cli(
    endpoint: str, bucket: str, tmp_path: Path, *flags: str
) -> tuple[dict[str, Any], list[str]]:
    """`actionmesh ckpt gc --keep 1 FLAGS --json` against the bucket, as ops run it; its JSON
    and the blob keys left."""
    remote_url = f"s3://{bucket}/fleet-a?endpoint_url={endpoint}&region=us-east-1"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    argv = ["gc", "--flash-dir", str(tmp_path / "gc-flash"), "--remote", remote_url]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "ckpt", *argv, "--keep", "1", *flags, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    blobs = remote_for(endpoint, bucket).store.list("blobs/")
    return json.loads(result.stdout), blobs


def test_gc_keeps_young_unreferenced_blobs_unless_grace_is_0(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    remote = remote_for(endpoint, bucket)
    for version in ("v1", "v2"):
        snapshot(flash, fake_parts(tmp_path / f"src-{version}"), key, version)
        remote.push(flash, version)
    named = {blob_key(e.sha256) for e in remote.manifest("v2").files.values()}
    collected, blobs = gc_cli(endpoint, bucket, tmp_path)  # default grace: an hour
    assert collected["remote"] == {"kept": ["v2"], "deleted": ["v1"]}
    assert len(blobs) == 6  # v1's blobs are unreferenced, but only seconds old
    collected, blobs = gc_cli(endpoint, bucket, tmp_path, "--grace-s", "0")
    assert collected["remote"] == {"kept": ["v2"], "deleted": []}
    assert set(blobs) == named


def test_a_push_touches_the_blobs_it_skips_on_s3(
    endpoint: str, bucket: str, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    remote = remote_for(endpoint, bucket)
    source = fake_parts(tmp_path / "src")
    snapshot(flash, source, key, "v1")
    remote.push(flash, "v1")
    snapshot(flash, source, key, "v2")  # the same parts: the same blobs
    before = remote.store.list_modified("blobs/")
    time.sleep(1.1)  # S3's LastModified counts whole seconds
    pushed = remote.push(flash, "v2")
    assert pushed.uploaded == () and len(pushed.skipped) == 3
    after = remote.store.list_modified("blobs/")
    assert set(after) == set(before) and all(after[k] > before[k] for k in before)
    assert remote.store.touch(blob_key("0" * 64)) is False  # absent: not created
    other = LocalFlash(tmp_path / "other", [key.public_key()])
    assert other.verify(remote.pull(other, "v2").version).ok  # the copy kept the bytes
    # gc compares S3's LastModified with its cutoff: an hour after the touch, once no
    # manifest names them, those blobs go.
    later = max(after.values()) + timedelta(hours=1, seconds=1)
    remote.store.delete("versions/v2/manifest.json")
    remote.store.delete("versions/v1/manifest.json")
    snapshot(flash, fake_parts(tmp_path / "src-v3"), key, "v3")
    remote.push(flash, "v3")
    gc.collect_remote(remote, keep_newest=1, now=lambda: later)
    assert remote.store.list("blobs/") == sorted(
        blob_key(e.sha256) for e in remote.manifest("v3").files.values()
    )


def test_unreachable_endpoint_retries_are_bounded_and_counted(tmp_path: Path) -> None:
    before = (
        REGISTRY.get_sample_value("actionmesh_checkpoint_retries_total", {"operation": "head"})
        or 0.0
    )
    store = open_blobstore(
        "s3://nowhere/x",
        options(f"http://127.0.0.1:{free_port()}", max_attempts=3, retry_max_wait_s=0.05),
    )
    with pytest.raises(StoreUnavailable, match="3 attempts"):
        store.exists("CURRENT")
    after = REGISTRY.get_sample_value("actionmesh_checkpoint_retries_total", {"operation": "head"})
    assert after == before + 2


def test_ensure_local_serves_local_when_remote_unreachable(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    flash = LocalFlash(tmp_path / "flash", [key.public_key()])
    snapshot(flash, fake_parts(tmp_path / "src"), key, "v1")
    unreachable = Remote(
        open_blobstore(
            "s3://nowhere/x",
            options(f"http://127.0.0.1:{free_port()}", max_attempts=2, retry_max_wait_s=0.05),
        )
    )
    loaded = ensure_local(flash, unreachable)
    assert loaded.version == "v1" and loaded.path == flash.path("v1")


def test_s3_calls_are_spans_under_the_current_one_when_tracing_is_on(
    endpoint: str, bucket: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.start(provider)
    try:
        with tracing.span("actionmesh.pull"):
            assert remote_for(endpoint, bucket).versions() == []
        spans = list(exporter.get_finished_spans())
    finally:
        tracing.shutdown()
    (pull,) = [s for s in spans if s.name == "actionmesh.pull"]
    s3 = [s for s in spans if s.attributes and s.attributes.get("rpc.service") == "S3"]
    assert s3, [s.name for s in spans]
    assert all(s.parent is not None and s.parent.span_id == pull.context.span_id for s in s3)
