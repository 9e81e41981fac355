"""Garbage collection: keep the N newest versions and every version still in use.

`plan` is a pure decision; `collect_local` / `collect_remote` do the I/O. Pinned versions:
local CURRENT, remote CURRENT (and the version it names as previous, the rollback target),
and whatever the caller passes as in use (versions nodes advertise)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from checkpoint.errors import NotFound, VerificationFailed
from checkpoint.local_flash import LocalFlash
from checkpoint.remote import Remote, blob_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcPlan:
    keep: tuple[str, ...]
    delete: tuple[str, ...]


def plan(created: Mapping[str, datetime], keep_newest: int, pinned: Iterable[str]) -> GcPlan:
    """Keep the `keep_newest` newest versions (by created_at) and every pinned one."""
    if keep_newest < 1:
        raise ValueError("keep_newest must be >= 1: gc never deletes every version")
    newest = sorted(created, key=lambda v: (created[v], v), reverse=True)
    keep = set(newest[:keep_newest]) | (set(pinned) & set(created))
    return GcPlan(
        keep=tuple(sorted(keep)), delete=tuple(sorted(v for v in created if v not in keep))
    )


def collect_local(
    flash: LocalFlash,
    keep_newest: int,
    *,
    in_use: Iterable[str] = (),
    remote_current: str | None = None,
    dry_run: bool = False,
) -> GcPlan:
    """Delete local versions outside the plan. A version with an unreadable manifest counts
    as the oldest (it is deleted unless pinned); quarantine/ is left for people to inspect."""
    created = {}
    for version in flash.versions():
        try:
            created[version] = flash.manifest(version).created_at
        except (NotFound, VerificationFailed):
            created[version] = datetime.min.replace(tzinfo=UTC)
    pinned = {*in_use, *(v for v in (flash.current(), remote_current) if v)}
    decided = plan(created, keep_newest, pinned)
    if not dry_run:
        flash.clean_incoming()
        for version in decided.delete:
            flash.remove(version)
            log.info("version=%s removed from local flash %s", version, flash.root)
    return decided


def collect_remote(
    remote: Remote,
    keep_newest: int,
    *,
    in_use: Iterable[str] = (),
    dry_run: bool = False,
) -> GcPlan:
    """Delete remote manifests outside the plan first (so no reader finds a version whose
    blobs are gone), then blobs that no kept manifest names. Run it while no push is in
    flight: a push that found a blob present just before this deletes it restores it after
    committing its manifest, but only once (a grace period on blob age would close that)."""
    manifests = {v: remote.manifest(v) for v in remote.versions()}
    pointer = remote.pointer()
    pinned = set(in_use)
    if pointer is not None:
        pinned |= {v for v in (pointer.version, pointer.previous) if v}
    decided = plan({v: m.created_at for v, m in manifests.items()}, keep_newest, pinned)
    if dry_run:
        return decided
    for version in decided.delete:
        remote.store.delete(f"versions/{version}/manifest.json")
        log.info("version=%s removed from the remote store", version)
    live = {blob_key(e.sha256) for v in decided.keep for e in manifests[v].files.values()}
    for key in remote.store.list("blobs/"):
        if key not in live:
            remote.store.delete(key)
    return decided
