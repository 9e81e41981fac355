"""Remote gc against pushes in flight, on a file:// blob store: the grace period on blob age,
pushes touching the blobs they reuse, and the interleavings of a gc and a push that used to
lose a blob. Blob ages are set explicitly (os.utime), push durations by an injected clock."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from checkpoint import gc
from checkpoint.local_blobstore import LocalBlobStore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import build_manifest, sign
from checkpoint.remote import DEFAULT_GRACE_S, Remote, blob_key

CONFIG = {"d_model": 64, "n_stages": 2}
FILES = ("stage-0.safetensors", "stage-1.safetensors")
HOUR = timedelta(hours=1)


def add_version(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, version: str, content: int, day: int
) -> set[str]:
    """A local version whose files hold `content` (same content: same blobs); its blob keys."""
    source = tmp_path / f"src-{version}"
    source.mkdir()
    for index, name in enumerate(FILES):
        (source / name).write_bytes(bytes([content, index]) * 2048)
    created_at = datetime(2026, 1, day, tzinfo=UTC)
    manifest = build_manifest(source, version, CONFIG, creator="t", created_at=created_at)
    flash.add(source, sign(manifest, key))
    return {blob_key(e.sha256) for e in flash.manifest(version).files.values()}


def set_modified(store: LocalBlobStore, keys: set[str], at: datetime) -> None:
    for key in keys:
        os.utime(store.root / key, (at.timestamp(), at.timestamp()))


def now() -> datetime:
    return datetime.now(UTC)


class HookedStore(LocalBlobStore):
    """A file store that runs `before_list_modified` / `before_commit` (once) at that point:
    how the tests interleave a gc and a push."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.before_list_modified: Callable[[], None] | None = None
        self.after_list_modified: Callable[[], None] | None = None
        self.before_commit: Callable[[], None] | None = None

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        hook, self.before_list_modified = self.before_list_modified, None
        if hook:
            hook()
        found = super().list_modified(prefix)
        hook, self.after_list_modified = self.after_list_modified, None
        if hook:
            hook()
        return found

    def put_if(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        hook, self.before_commit = self.before_commit, None
        if hook and key.endswith("manifest.json"):
            hook()
        return super().put_if(key, data, if_match=if_match, if_none_match=if_none_match)


# -- the decision ---------------------------------------------------------------------------


def test_stale_blobs_are_unreferenced_and_older_than_the_cutoff() -> None:
    cutoff = datetime(2026, 6, 1, 12, tzinfo=UTC)
    modified = {
        "blobs/old": cutoff - timedelta(seconds=1),
        "blobs/at-cutoff": cutoff,
        "blobs/young": cutoff + HOUR,
        "blobs/old-but-named": cutoff - 10 * HOUR,
    }
    assert gc.stale_blobs(modified, {"blobs/old-but-named"}, cutoff) == ("blobs/old",)
    assert gc.stale_blobs(modified, set(), cutoff + 2 * HOUR) == tuple(sorted(modified))


def test_the_default_grace_period_is_one_hour_and_negative_is_refused(
    flash: LocalFlash, tmp_path: Path
) -> None:
    assert DEFAULT_GRACE_S == 3600.0
    with pytest.raises(ValueError, match="grace_s"):
        gc.collect_remote(Remote(LocalBlobStore(tmp_path / "remote")), 1, grace_s=-1)


# -- push -------------------------------------------------------------------------------------


def test_a_push_touches_the_blobs_it_skips_as_present(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = LocalBlobStore(tmp_path / "remote")
    remote = Remote(store)
    blobs = add_version(flash, tmp_path, key, "v1", content=1, day=1)
    add_version(flash, tmp_path, key, "v2", content=1, day=2)  # the same blobs
    remote.push(flash, "v1")
    long_ago = now() - timedelta(days=30)
    set_modified(store, blobs, long_ago)
    before = now() - timedelta(seconds=5)  # file systems' mtime granularity
    pushed = remote.push(flash, "v2")
    assert pushed.uploaded == () and sorted(pushed.skipped) == sorted(FILES)
    modified = store.list_modified("blobs/")
    assert set(modified) == blobs and all(at >= before for at in modified.values())
    assert not store.touch("blobs/" + "0" * 64)  # absent: nothing created
    assert not store.exists("blobs/" + "0" * 64)


def test_a_push_slower_than_the_grace_period_warns(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    add_version(flash, tmp_path, key, "v1", content=1, day=1)
    add_version(flash, tmp_path, key, "v2", content=2, day=2)
    times = iter([100.0, 109.0, 200.0, 211.0])  # start and commit of each push
    remote = Remote(LocalBlobStore(tmp_path / "remote"), grace_s=10, clock=lambda: next(times))
    with caplog.at_level(logging.WARNING, logger="checkpoint.remote"):
        remote.push(flash, "v1")
        assert "grace period" not in caplog.text
        remote.push(flash, "v2")
    assert "version=v2 took 11 s" in caplog.text and "grace period (10 s)" in caplog.text


# -- gc ---------------------------------------------------------------------------------------


def test_gc_deletes_an_old_unreferenced_blob_and_keeps_a_young_one(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = LocalBlobStore(tmp_path / "remote")
    remote = Remote(store)
    gone = add_version(flash, tmp_path, key, "v1", content=1, day=1)
    kept = add_version(flash, tmp_path, key, "v2", content=2, day=2)
    for version in ("v1", "v2"):
        remote.push(flash, version)
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    old, young = sorted(gone)
    set_modified(store, kept, at - 10 * HOUR)  # old, but v2 names them
    set_modified(store, {old}, at - HOUR - timedelta(seconds=1))
    set_modified(store, {young}, at - HOUR + timedelta(seconds=1))

    decided = gc.collect_remote(remote, keep_newest=1, grace_s=3600, now=lambda: at)
    assert decided.delete == ("v1",) and remote.versions() == ["v2"]
    assert set(store.list("blobs/")) == kept | {young}

    gc.collect_remote(remote, keep_newest=1, grace_s=0, now=lambda: at)
    assert set(store.list("blobs/")) == kept


def test_dry_run_deletes_nothing(flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = LocalBlobStore(tmp_path / "remote")
    remote = Remote(store)
    for day, version in enumerate(("v1", "v2"), start=1):
        add_version(flash, tmp_path, key, version, content=day, day=day)
        remote.push(flash, version)
    before = store.list("")
    assert gc.collect_remote(remote, 1, grace_s=0, dry_run=True).delete == ("v1",)
    assert store.list("") == before


# -- a gc and a push at once --------------------------------------------------------------------


def setup_race(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> tuple[HookedStore, set[str]]:
    """Remote: v1 (old, outside keep_newest=1) and v3; its blobs all a day old. Local flash
    also holds v2, not pushed yet, made of v1's blobs: a gc deletes v1 and (by age alone) its
    blobs, while the push of v2 finds them present."""
    store = HookedStore(tmp_path / "remote")
    remote = Remote(store)
    shared = add_version(flash, tmp_path, key, "v1", content=1, day=1)
    add_version(flash, tmp_path, key, "v2", content=1, day=2)
    add_version(flash, tmp_path, key, "v3", content=3, day=3)
    for version in ("v1", "v3"):
        remote.push(flash, version)
    set_modified(store, set(store.list("blobs/")), now() - timedelta(days=1))
    return store, shared


def assert_v2_intact(store: LocalBlobStore, shared: set[str], key: Ed25519PrivateKey) -> None:
    remote = Remote(store)
    assert "v2" in remote.versions()
    assert shared <= set(store.list("blobs/"))
    check = LocalFlash(store.root.parent / "check", [key.public_key()])
    assert remote.pull(check, "v2").downloaded and check.verify("v2").ok


@pytest.mark.parametrize("when", ["before_list_modified", "after_list_modified"])
def test_a_push_committing_between_gc_listing_manifests_and_deleting_blobs_loses_nothing(
    flash: LocalFlash,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    when: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gc lists the manifests (v2 is not there), then the push of v2 runs whole (its blobs are
    present and old: skipped), then gc lists the blobs and deletes. Before gc lists the blobs,
    the push's touch makes them young; after it (gc saw them old), gc's listing of the
    manifests again before each delete finds v2."""
    store, shared = setup_race(flash, tmp_path, key)
    pushed: list[object] = []
    setattr(store, when, lambda: pushed.append(Remote(store).push(flash, "v2")))
    with caplog.at_level(logging.WARNING, logger="checkpoint.remote"):
        decided = gc.collect_remote(Remote(store), keep_newest=1)
    assert pushed and decided.delete == ("v1",)
    assert "vanished" not in caplog.text  # nothing had to be uploaded again
    assert_v2_intact(store, shared, key)


def test_a_gc_running_between_a_push_touching_its_blobs_and_committing_keeps_them(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole gc runs after the push touched v2's blobs and before its manifest is
    committed: no manifest names them, only the grace period keeps them."""
    store, shared = setup_race(flash, tmp_path, key)
    store.before_commit = lambda: gc.collect_remote(Remote(store), keep_newest=1)
    with caplog.at_level(logging.WARNING, logger="checkpoint.remote"):
        assert sorted(Remote(store).push(flash, "v2").skipped) == sorted(FILES)
    assert "v1" not in Remote(store).versions()  # the gc did run
    assert "vanished" not in caplog.text
    assert_v2_intact(store, shared, key)


def test_a_blob_deleted_before_the_commit_is_uploaded_again(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside the assumptions (a gc that saw the blobs old before the push touched them, here
    a gc whose clock is a day ahead), a deletion before the commit is repaired after it."""
    store, shared = setup_race(flash, tmp_path, key)
    ahead = now() + timedelta(days=1)
    store.before_commit = lambda: gc.collect_remote(Remote(store), 1, now=lambda: ahead)
    with caplog.at_level(logging.WARNING, logger="checkpoint.remote"):
        Remote(store).push(flash, "v2")
    assert "vanished during push: re-uploading" in caplog.text
    assert_v2_intact(store, shared, key)
