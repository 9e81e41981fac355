"""Versions in a blob store, and moving them between it and local flash.

Remote layout (under the store's prefix):
    blobs/<sha256>                 file contents, content-addressed (unchanged parts upload once)
    versions/<id>/manifest.json    written last: the commit point of a version
    CURRENT                        {"version", "previous", "updated_at", "by"}, moved only by
                                   a conditional write (If-Match / If-None-Match)
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from checkpoint.blobstore import BlobStore
from checkpoint.errors import (
    NotFound,
    PreconditionFailed,
    StoreUnavailable,
    VerificationFailed,
    VersionConflict,
    shown,
)
from checkpoint.local_flash import LoadResult, LocalFlash, check_signature
from checkpoint.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_id,
    hash_file,
    is_id,
    parse_manifest,
)

log = logging.getLogger(__name__)

CURRENT_KEY = "CURRENT"
DEFAULT_GRACE_S = 3600.0
"""gc deletes an unreferenced blob only when it was last modified longer ago than this; a
push must commit its manifest within it (see gc.collect_remote)."""
Progress = Callable[[str, int], None]
"""Called with (file name, bytes) after each file is transferred or skipped."""


def blob_key(sha256: str) -> str:
    return f"blobs/{sha256}"


def manifest_key(version: str) -> str:
    return f"versions/{check_id(version)}/{MANIFEST_NAME}"


@dataclass(frozen=True)
class PushResult:
    version: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_uploaded: int


@dataclass(frozen=True)
class PullResult:
    version: str
    manifest: Manifest
    downloaded: tuple[str, ...]
    reused: tuple[str, ...]


@dataclass(frozen=True)
class Pointer:
    version: str
    previous: str | None
    updated_at: str
    by: str
    etag: str


def default_operator() -> str:
    return socket.gethostname()


class Remote:
    def __init__(
        self,
        store: BlobStore,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`grace_s`: the gc grace period a push is warned about outliving; `clock` times
        pushes (injected by tests)."""
        self.store = store
        self.grace_s = grace_s
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Committed versions (those whose manifest is present); keys whose name is not a
        version id are not versions."""
        return sorted(
            key.split("/")[1]
            for key in self.store.list("versions/")
            if key.endswith(f"/{MANIFEST_NAME}")
            and key.count("/") == 2
            and is_id(key.split("/")[1])
        )

    def manifest(self, version: str) -> Manifest:
        found = self.store.get(manifest_key(version))
        if found is None:
            raise NotFound(f"version={version} is not in the remote store")
        return parse_manifest(found.data)

    def pointer(self) -> Pointer | None:
        """The remote CURRENT, or None when unset. Raises VerificationFailed when it is not a
        JSON object naming a valid version id (a shard then serves its own flash)."""
        found = self.store.get(CURRENT_KEY)
        if found is None:
            return None
        return parse_pointer(found.data, found.etag)

    def current(self) -> str | None:
        pointer = self.pointer()
        return pointer.version if pointer else None

    # -- push ------------------------------------------------------------------------------

    def push(self, flash: LocalFlash, version: str, progress: Progress | None = None) -> PushResult:
        """Upload a verified local version: blobs first, then the manifest, the commit point.
        A blob already present is not uploaded again but touched (its last-modified time set
        to now), so that a concurrent gc's grace period protects it until the manifest names
        it; a push that takes longer than the grace period says so. After the commit, any
        blob a gc deleted meanwhile is uploaded again. Re-running after a crash completes the
        push."""
        checked = flash.verify(version)
        if not checked.ok or checked.manifest is None:
            raise VerificationFailed(
                f"version={version} not pushed, it fails verification: "
                + "; ".join(checked.problems)
            )
        manifest = checked.manifest
        uploaded, skipped, sent = [], [], 0
        started = self._clock()
        for name, entry in sorted(manifest.files.items()):
            key = blob_key(entry.sha256)
            if self.store.touch(key):
                skipped.append(name)
            else:
                self.store.put_file(key, flash.path(version) / name)
                uploaded.append(name)
                sent += entry.size
            if progress:
                progress(name, entry.size)
        self._commit_manifest(manifest)
        took = self._clock() - started
        if 0 < self.grace_s < took:  # grace 0: the operator chose no protection
            log.warning(
                "version=%s took %.0f s from its first blob to its manifest, longer than the gc "
                "grace period (%.0f s): a `ckpt gc` running meanwhile could delete a blob it "
                "names. Run the same push again once no gc runs (it re-uploads what is missing), "
                "or raise --grace-s",
                version,
                took,
                self.grace_s,
            )
        self._restore_missing(flash, manifest)
        log.info(
            "version=%s pushed: %d files uploaded (%d bytes), %d already present",
            version,
            len(uploaded),
            sent,
            len(skipped),
        )
        return PushResult(version, tuple(uploaded), tuple(skipped), sent)

    def _restore_missing(self, flash: LocalFlash, manifest: Manifest) -> None:
        """A gc that listed a blob as old before this push touched it may still delete it
        before the manifest is committed (see gc.collect_remote); upload any such blob again."""
        for name, entry in sorted(manifest.files.items()):
            key = blob_key(entry.sha256)
            if not self.store.exists(key):
                log.warning(
                    "version=%s %s: blob %s vanished during push: re-uploading",
                    manifest.version,
                    name,
                    key,
                )
                self.store.put_file(key, flash.path(manifest.version) / name)

    def _commit_manifest(self, manifest: Manifest) -> None:
        key = manifest_key(manifest.version)
        try:
            self.store.put_if(key, manifest.to_json(), if_none_match=True)
        except PreconditionFailed:
            existing = self.manifest(manifest.version)
            if existing.files != manifest.files or existing.config != manifest.config:
                raise VersionConflict(
                    f"version={manifest.version} already exists remotely with other content"
                ) from None

    # -- promote ---------------------------------------------------------------------------

    def promote(
        self,
        version: str,
        *,
        expected: str | None = None,
        by: str | None = None,
    ) -> Pointer:
        """Move the remote CURRENT to `version` with a conditional write: of two operators
        promoting at once, one wins and the other gets PreconditionFailed. With `expected`,
        also refuse unless CURRENT still names that version (what the operator last saw)."""
        self.manifest(version)  # must be committed remotely
        before, etag_before = self._pointer_to_replace(expected)
        if expected is not None and (before is None or before.version != expected):
            raise PreconditionFailed(
                f"CURRENT is {before.version if before else 'unset'}, not {expected}: "
                "someone else promoted; check `ckpt list` and retry"
            )
        previous = before.version if before else None
        updated_at, operator = datetime.now(UTC).isoformat(), by or default_operator()
        doc = {"version": version, "previous": previous, "updated_at": updated_at, "by": operator}
        data = json.dumps(doc, sort_keys=True).encode()
        try:
            if etag_before is None:
                etag = self.store.put_if(CURRENT_KEY, data, if_none_match=True)
            else:
                etag = self.store.put_if(CURRENT_KEY, data, if_match=etag_before)
        except PreconditionFailed as exc:
            raise PreconditionFailed(
                f"promote {version} lost a race: CURRENT changed while promoting "
                f"(it was {before.version if before else 'unset'}); "
                f"re-read it with `ckpt list` and retry if still wanted ({exc})"
            ) from exc
        log.info("version=%s promoted (previous %s) by %s", version, previous, operator)
        return Pointer(version, previous, updated_at, operator, etag)

    def _pointer_to_replace(self, expected: str | None) -> tuple[Pointer | None, str | None]:
        """CURRENT and the etag a conditional write must name to replace it. A malformed
        CURRENT may be replaced by a plain promote (that is how it is repaired), not by one
        that expects a version (rollback)."""
        found = self.store.get(CURRENT_KEY)
        if found is None:
            return None, None
        try:
            return parse_pointer(found.data, found.etag), found.etag
        except VerificationFailed as exc:
            if expected is not None:
                raise
            log.warning("replacing a malformed remote CURRENT: %s", exc)
            return None, found.etag

    def rollback(self, *, by: str | None = None) -> Pointer:
        """Promote the version CURRENT names as previous (or, failing that, its parent)."""
        before = self.pointer()
        if before is None:
            raise NotFound("remote CURRENT is unset: nothing to roll back")
        target = before.previous or self.manifest(before.version).parent
        if target is None:
            raise NotFound(f"CURRENT={before.version} has no previous or parent version")
        return self.promote(target, expected=before.version, by=by)

    # -- pull ------------------------------------------------------------------------------

    def pull(self, flash: LocalFlash, version: str, progress: Progress | None = None) -> PullResult:
        """Download a version into local flash; signature, sizes and checksums are verified
        before it becomes visible there. Parts that another local version already holds (same
        sha256) are copied locally instead of downloaded. A good local copy is kept as is.
        NoSpace, before any download, when flash has no room for the version."""
        manifest = self.manifest(version)
        refused = check_signature(manifest, flash.trusted_keys, flash.insecure)
        if refused:
            raise VerificationFailed(f"version={version} not pulled: {refused}")
        if flash.path(version).is_dir() and flash.verify(version).ok:
            return PullResult(version, manifest, (), ())
        flash.check_room(version, (entry.size for entry in manifest.files.values()))
        local = flash.blob_index()
        downloaded, reused = [], []
        with flash.incoming(version) as staged:
            for name, entry in sorted(manifest.files.items()):
                if entry.sha256 in local and self._copy(local[entry.sha256], staged / name, entry):
                    reused.append(name)
                else:
                    self.store.get_file(blob_key(entry.sha256), staged / name)
                    downloaded.append(name)
                if progress:
                    progress(name, entry.size)
            flash.commit(staged, manifest)
        log.info(
            "version=%s pulled to %s: %d files downloaded, %d reused from local versions",
            version,
            flash.root,
            len(downloaded),
            len(reused),
        )
        return PullResult(version, manifest, tuple(downloaded), tuple(reused))

    @staticmethod
    def _copy(source: Path, target: Path, entry: FileEntry) -> bool:
        """Copy a part from another local version; False (and nothing left) if it is bad."""
        try:
            shutil.copyfile(source, target)
        except OSError:
            return False
        if hash_file(target) == entry:
            return True
        target.unlink()
        return False


def parse_pointer(data: bytes, etag: str) -> Pointer:
    """CURRENT's bytes as a Pointer; VerificationFailed unless a JSON object whose version
    (and previous, if any) are valid version ids."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version, previous = doc.get("version"), doc.get("previous")
        if not isinstance(version, str):
            raise ValueError(f"no version id in it (version: {shown(version)})")
        if previous is not None and not isinstance(previous, str):
            raise ValueError(f"previous is {shown(previous)}, not a version id")
        return Pointer(
            version=check_id(version),
            previous=None if previous is None else check_id(previous),
            updated_at=str(doc.get("updated_at", "")),
            by=str(doc.get("by", "")),
            etag=etag,
        )
    except ValueError as exc:  # json.JSONDecodeError and InvalidInput are ValueErrors
        raise VerificationFailed(
            f"remote CURRENT is malformed ({exc}; it holds {shown(data)}): "
            "repair it with `ckpt promote VERSION`"
        ) from None


def ensure_local(
    flash: LocalFlash, remote: Remote | None, version: str | None = None
) -> LoadResult:
    """What a shard calls at start and on a version change: the verified local copy of
    `version` (default: the remote CURRENT, or the local one without a remote), pulled from
    the remote when missing or bad locally; local CURRENT then names it. Without a version to
    aim for (no remote, or it is unreachable), serves flash.load_current() (newest good local
    version)."""
    if version is None and remote is not None:
        try:
            version = remote.current()
        except StoreUnavailable as exc:
            log.warning("remote unreachable, serving the newest good local version: %s", exc)
        except VerificationFailed as exc:
            log.warning("%s; serving the newest good local version", exc)
    if version is None:
        return flash.load_current()
    local = flash.verify(version)
    quarantined = (local,) if local.quarantined_to is not None else ()
    if local.ok and local.manifest is not None:
        manifest = local.manifest
    elif remote is None:
        raise NotFound(f"version={version} is not good on {flash.root} and no remote is set")
    else:
        manifest = remote.pull(flash, version).manifest
    flash.set_current(version)
    return LoadResult(version, flash.path(version), manifest, True, quarantined)
