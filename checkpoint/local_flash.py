"""A node's verified cache of versions on local flash.

Layout under `root`:
    versions/<id>/            one directory per complete version: its files + manifest.json
    versions/.incoming-*/     a version being written (never read; removed by gc)
    quarantine/<id>-<stamp>/  versions that failed verification, moved aside
    CURRENT                   the id of the version this node should serve

A version is written into a temp dir beside its target, every file and the dir are fsynced,
the dir is renamed into `versions/<id>` and `versions/` is fsynced; only then may `CURRENT`
name it (temp file + fsync + rename + fsync). A reader never sees half a version."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from checkpoint.durable import atomic_write, fsync_dir, fsync_file
from checkpoint.errors import NoSpace, NotFound, VerificationFailed, VersionConflict, shown
from checkpoint.manifest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    check_id,
    hash_file,
    is_id,
    key_id,
    parse_manifest,
    sign,
    verify_signature,
)

log = logging.getLogger(__name__)

CURRENT_NAME = "CURRENT"
INCOMING_PREFIX = ".incoming-"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def no_space_is_checkpoint_error(root: Path, doing: str) -> Iterator[None]:
    """A full disk (or quota) while writing to flash raises NoSpace naming the flash, so every
    caller that handles checkpoint errors (keep serving, retry later) handles it too."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE_ERRNOS:
            raise
        raise NoSpace(f"no space left on local flash {root} {doing}: {exc}") from exc


@dataclass(frozen=True)
class VerifyResult:
    """`corrupt`: proven bad whatever the keys (a file or the manifest does not match, or the
    signature of a trusted signer does not verify): only such a version is quarantined. A
    version that is merely not vouched for (unsigned, or signed by a key not given) is not."""

    version: str
    ok: bool
    problems: tuple[str, ...] = ()
    manifest: Manifest | None = None
    quarantined_to: Path | None = None
    corrupt: bool = False


@dataclass(frozen=True)
class LoadResult:
    """The version to serve, and every version found bad (and quarantined) on the way."""

    version: str
    path: Path
    manifest: Manifest
    from_current: bool
    quarantined: tuple[VerifyResult, ...] = field(default=())


def check_signature(
    manifest: Manifest, trusted_keys: Sequence[Ed25519PublicKey], insecure: bool
) -> str | None:
    """None when acceptable, else the reason it is refused."""
    if any(verify_signature(manifest, key) for key in trusted_keys):
        return None
    if insecure:
        return None
    if manifest.signature is None:
        return "manifest is unsigned (pass insecure=True to accept unsigned versions)"
    return f"manifest signature by {manifest.signer} does not verify with any trusted key"


def tampered(manifest: Manifest, trusted_keys: Sequence[Ed25519PublicKey]) -> bool:
    """The manifest names a trusted key as its signer, and that key's signature does not
    verify: the manifest changed after it was signed (proof of corruption, not of a key typo)."""
    return any(
        manifest.signer == key_id(key) and not verify_signature(manifest, key)
        for key in trusted_keys
    )


def check_files(directory: Path, manifest: Manifest) -> list[str]:
    """Every file of the manifest present in `directory` with its size and sha256."""
    problems = []
    for name, entry in sorted(manifest.files.items()):
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != entry.size:
            problems.append(f"{name}: size {size} != {entry.size}")
            continue
        if hash_file(path).sha256 != entry.sha256:
            problems.append(f"{name}: sha256 mismatch")
    return problems


class LocalFlash:
    def __init__(
        self,
        root: Path,
        trusted_keys: Sequence[Ed25519PublicKey] = (),
        *,
        insecure: bool = False,
        create: bool = True,
    ) -> None:
        """`create=False` (readers): a `root` without versions/ is refused with NotFound
        rather than created, so a mistyped path is not silently made into an empty cache."""
        self.root = root
        self.trusted_keys = tuple(trusted_keys)
        self.insecure = insecure
        self.versions_dir = root / "versions"
        self.quarantine_dir = root / "quarantine"
        if not create:
            if not self.versions_dir.is_dir():
                raise NotFound(f"no checkpoint flash at {root} (it has no versions/ directory)")
            return
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------

    def path(self, version: str) -> Path:
        return self.versions_dir / check_id(version)

    def versions(self) -> list[str]:
        """Ids of the complete versions on flash (verified or not), sorted by name; anything
        else in versions/ (temp dirs, names that are not version ids) is not a version."""
        return sorted(
            p.name
            for p in self.versions_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and is_id(p.name)
        )

    def manifest(self, version: str) -> Manifest:
        try:
            data = (self.path(version) / MANIFEST_NAME).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"version={version} has no manifest on {self.root}") from exc
        manifest = parse_manifest(data)
        if manifest.version != version:
            raise VerificationFailed(
                f"version={version} directory holds the manifest of {manifest.version}"
            )
        return manifest

    def blob_index(self) -> dict[str, Path]:
        """sha256 -> a local file with that content per its manifest (not re-verified here)."""
        index: dict[str, Path] = {}
        for version in self.versions():
            try:
                files = self.manifest(version).files
            except (NotFound, VerificationFailed):
                continue
            for name, entry in files.items():
                index.setdefault(entry.sha256, self.path(version) / name)
        return index

    def current(self) -> str | None:
        """The version CURRENT names; None when unset or when it names no valid version id
        (logged: a node then serves its newest good version)."""
        try:
            text = (self.root / CURRENT_NAME).read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        if text and not is_id(text):
            log.warning(
                "local CURRENT on %s names no version id (%s): ignored", self.root, shown(text)
            )
            return None
        return text or None

    # -- verification ----------------------------------------------------------------------

    def check(self, version: str) -> VerifyResult:
        """Verify without side effects: manifest, signature, every file's size and sha256."""
        if not self.path(version).is_dir():
            return VerifyResult(version, ok=False, problems=("not on local flash",))
        try:
            manifest = self.manifest(version)
        except (NotFound, VerificationFailed) as exc:  # a complete version has a manifest
            return VerifyResult(version, ok=False, problems=(str(exc),), corrupt=True)
        problems = []
        refused = check_signature(manifest, self.trusted_keys, self.insecure)
        if refused:
            problems.append(refused)
        bad_files = check_files(self.path(version), manifest)
        problems.extend(bad_files)
        corrupt = bool(bad_files) or (refused is not None and tampered(manifest, self.trusted_keys))
        return VerifyResult(
            version, not problems, tuple(problems), manifest=manifest, corrupt=corrupt
        )

    def verify(self, version: str) -> VerifyResult:
        """Verify; a version proven corrupt is moved to quarantine/ and reported (log +
        result). One the trusted keys cannot vouch for is reported and left in place: a
        missing or wrong key must not empty the cache."""
        result = self.check(version)
        if result.ok or not result.corrupt or not self.path(version).is_dir():
            return result
        moved = self.quarantine(version)
        log.error(
            "version=%s failed verification, quarantined to %s: %s",
            version,
            moved,
            "; ".join(result.problems),
        )
        return VerifyResult(
            version,
            ok=False,
            problems=result.problems,
            manifest=result.manifest,
            quarantined_to=moved,
            corrupt=True,
        )

    def quarantine(self, version: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.quarantine_dir / f"{check_id(version)}-{stamp}"
        self.quarantine_dir.mkdir(exist_ok=True)
        os.rename(self.path(version), target)
        fsync_dir(self.versions_dir)
        fsync_dir(self.quarantine_dir)
        return target

    def load_current(self) -> LoadResult:
        """The version to serve: CURRENT if it verifies, else the newest good version (by
        created_at, and not newer than CURRENT when CURRENT's manifest is still readable, so
        a rollback is not undone). Corrupt versions met on the way are quarantined. CURRENT itself
        is left alone: pulling a good copy of it repairs the node. Raises NotFound if no
        version verifies."""
        bad: list[VerifyResult] = []
        current = self.current()
        ceiling: datetime | None = None
        if current is not None:
            result = self.verify(current)
            if result.ok and result.manifest is not None:
                return LoadResult(current, self.path(current), result.manifest, True, ())
            bad.append(result)
            if result.manifest is not None:
                ceiling = result.manifest.created_at
        for version, created_at in self._by_age():
            if version == current or (ceiling is not None and created_at > ceiling):
                continue
            result = self.verify(version)
            if result.ok and result.manifest is not None:
                log.warning("version=%s serving instead of CURRENT=%s", version, current)
                return LoadResult(version, self.path(version), result.manifest, False, tuple(bad))
            bad.append(result)
        raise NotFound(
            f"no good version on {self.root} (CURRENT={current}); pull one from the remote"
        )

    def _by_age(self) -> list[tuple[str, datetime]]:
        """(version, created_at) newest first; versions whose manifest is unreadable last."""
        aged = []
        oldest = datetime.min.replace(tzinfo=UTC)
        for version in self.versions():
            try:
                aged.append((version, self.manifest(version).created_at))
            except (NotFound, VerificationFailed):
                aged.append((version, oldest))
        return sorted(aged, key=lambda item: item[1], reverse=True)

    # -- writing ---------------------------------------------------------------------------

    def check_room(self, version: str, sizes: Iterable[int]) -> None:
        """NoSpace unless flash has room for files of `sizes` (each rounded up to the file
        system's block) and a manifest: refused before anything is downloaded or written."""
        stat = os.statvfs(self.versions_dir)
        block = stat.f_frsize or 4096
        needed = sum(-(-size // block) * block for size in sizes) + block
        free = stat.f_bavail * stat.f_frsize
        if needed > free:
            raise NoSpace(
                f"no space on local flash {self.root} for version={version}: "
                f"it needs {needed} bytes, {free} free"
            )

    @contextmanager
    def incoming(self, version: str) -> Iterator[Path]:
        """A temp dir beside versions/<id> to write a version's files into; removed if the
        block raises (a full disk then raises NoSpace). Pass it to commit() before the block
        ends."""
        staged = self.versions_dir / f"{INCOMING_PREFIX}{check_id(version)}-{uuid.uuid4().hex}"
        try:
            with no_space_is_checkpoint_error(self.root, f"writing version={version}"):
                staged.mkdir()
                yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def commit(self, staged: Path, manifest: Manifest) -> Path:
        """Check the staged files against `manifest` (and its signature), write the
        manifest, fsync everything, rename into versions/<id>, fsync versions/."""
        refused = check_signature(manifest, self.trusted_keys, self.insecure)
        problems = ([refused] if refused else []) + check_files(staged, manifest)
        if problems:
            raise VerificationFailed(f"version={manifest.version}: " + "; ".join(problems))
        target = self.path(manifest.version)
        if target.exists():
            return self._existing(target, manifest)
        atomic_write(staged / MANIFEST_NAME, manifest.to_json())
        for name in manifest.files:
            fsync_file(staged / name)
        fsync_dir(staged)
        os.rename(staged, target)
        fsync_dir(self.versions_dir)
        return target

    def _existing(self, target: Path, manifest: Manifest) -> Path:
        existing = self.manifest(manifest.version)
        if existing.files != manifest.files or existing.config != manifest.config:
            raise VersionConflict(
                f"version={manifest.version} already exists on {self.root} with other content"
            )
        return target

    def add(self, source: Path, manifest: Manifest) -> Path:
        """Copy the files of `manifest` from `source` into a new version on flash."""
        with self.incoming(manifest.version) as staged:
            for name in manifest.files:
                shutil.copyfile(source / name, staged / name)
            return self.commit(staged, manifest)

    def create(
        self,
        source: Path,
        version: str,
        config: Mapping[str, Any],
        *,
        creator: str,
        private_key: Ed25519PrivateKey | None,
        parent: str | None = None,
    ) -> Manifest:
        """Snapshot every file in `source` as a new version (signed unless `private_key` is
        None), parented on `parent` (default: CURRENT). Does not move CURRENT."""
        manifest = build_manifest(
            source, version, config, creator=creator, parent=parent or self.current()
        )
        if private_key is not None:
            manifest = sign(manifest, private_key)
        self.add(source, manifest)
        return manifest

    def set_current(self, version: str) -> None:
        """Point CURRENT at a complete version (temp file + fsync + rename + fsync dir)."""
        if not (self.path(version) / MANIFEST_NAME).is_file():
            raise NotFound(f"version={version} is not on local flash {self.root}")
        with no_space_is_checkpoint_error(self.root, f"pointing CURRENT at version={version}"):
            atomic_write(self.root / CURRENT_NAME, f"{version}\n".encode())

    def remove(self, version: str) -> None:
        """Delete a version (gc). Renamed aside first so it vanishes from readers at once."""
        doomed = self.versions_dir / f"{INCOMING_PREFIX}{check_id(version)}-gc-{uuid.uuid4().hex}"
        os.rename(self.path(version), doomed)
        fsync_dir(self.versions_dir)
        shutil.rmtree(doomed)

    def clean_incoming(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp dirs left by writers that died (older than `older_than_s`)."""
        removed = []
        limit = time.time() - older_than_s
        for path in self.versions_dir.iterdir():
            if path.name.startswith(INCOMING_PREFIX) and path.stat().st_mtime < limit:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
