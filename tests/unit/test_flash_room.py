"""Before pulling a version, a node's flash keeps only its newest versions and those in use:
every promote used to add a whole model copy until the disk was full. Real files, a file://
remote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from checkpoint.blobstore import open_blobstore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import build_manifest, keygen, load_private_key, load_public_key, sign
from checkpoint.remote import Remote
from service.runtime.checkpoint_source import version_weights
from service.runtime.settings import CheckpointSourceSettings

VERSIONS = ("v1", "v2", "v3", "v4", "v5")


@pytest.fixture
def settings(tmp_path: Path) -> CheckpointSourceSettings:
    """A file:// remote holding VERSIONS (each newer than the last), and a node's settings."""
    private_path, public_path = keygen(tmp_path / "keys")
    key = load_private_key(private_path)
    origin = LocalFlash(tmp_path / "origin", [load_public_key(public_path)])
    remote = Remote(open_blobstore(f"file://{tmp_path / 'remote'}"))
    for age, version in enumerate(VERSIONS):
        source = tmp_path / "src" / version
        source.mkdir(parents=True)
        (source / "model.json").write_text(json.dumps({"config": {}, "version": version}))
        (source / "stage-0.safetensors").write_bytes(bytes([age]) * 1024)
        created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=age)
        manifest = build_manifest(source, version, {}, creator="test", created_at=created)
        origin.add(source, sign(manifest, key))
        remote.push(origin, version)
    return CheckpointSourceSettings(
        flash_dir=tmp_path / "node",
        remote=f"file://{tmp_path / 'remote'}",
        trusted_keys=[public_path],
        flash_keep_versions=2,
    )


def node_versions(settings: CheckpointSourceSettings) -> list[str]:
    assert settings.flash_dir is not None
    return LocalFlash(settings.flash_dir, []).versions()


def test_a_pull_keeps_the_newest_versions_and_the_one_served(
    settings: CheckpointSourceSettings,
) -> None:
    assert settings.flash_dir is not None
    for version in VERSIONS:  # the shard keeps serving v1 while it follows promotes
        version_weights(settings, settings.flash_dir, version, serving="v1")
    # Before v5's pull: v3 and v4 the newest, v1 served (v4 CURRENT): v2 went.
    assert node_versions(settings) == ["v1", "v3", "v4", "v5"]


def test_a_version_already_on_flash_removes_nothing(settings: CheckpointSourceSettings) -> None:
    assert settings.flash_dir is not None
    for version in VERSIONS[:3]:
        version_weights(settings, settings.flash_dir, version, serving=version)
    before = node_versions(settings)
    version_weights(settings, settings.flash_dir, "v1")  # a rollback to what is here
    assert node_versions(settings) == before == ["v1", "v2", "v3"]
