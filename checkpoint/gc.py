"""Garbage collection: keep the N newest versions and every version still in use.

`plan` and `stale_blobs` are pure decisions; `collect_local` / `collect_remote` do the I/O.
Pinned versions: local CURRENT, remote CURRENT (and the version it names as previous, the
rollback target), and whatever the caller passes as in use (versions nodes advertise).

Remote gc and concurrent pushes. A push (remote.Remote.push) does, in order: P1 for each blob,
touch it (set its last-modified time to now; the store reports whether it was there) or, if it
was not there, upload it; P2 commit the manifest; P3 check every blob it names is there and
upload again any that is not. `collect_remote` does, in order: G0 take `cutoff` = now - grace;
G1 list and read the manifests; G2 delete those outside the plan; G3 list the blobs with their
last-modified times; G4 for each blob that no kept manifest names and that was last modified
before `cutoff`: list the manifests again (reading the new ones, whose blobs are then kept too),
and delete the blob unless one of them names it.

Why a push's version cannot lose a blob to gc. Assume (A1) a push commits its manifest (P2)
less than `grace` after it started P1 (it logs a warning when it did not), and (A2) the clocks of
the gc host and of the store agree to well within `grace` (the cutoff is taken on the first, the
last-modified times on the second). Let a push commit, at time tC, a manifest naming blob b,
and let a gc delete b at tD in G4, right after its last listing of manifests at tL.
- If tC < tL, that listing found the manifest (S3 lists are strongly consistent since 2020; a
  file store's trivially), so gc kept b. (A version gc decided to delete is gone with its
  manifest, as asked; pushed again after G2, its manifest is new to that listing.) So tC > tL.
- The push touched or uploaded b at some tT between its start and tC; from then on b's
  last-modified time is at least tT > tC - grace (A1) > tL - grace >= cutoff. gc saw b older
  than the cutoff, so its listing (G3) came before tT.
- If tD < tT, the push found b absent at tT and uploaded it again, and gc deletes a key once:
  no loss. If tT < tD < the push's check (P3), P3 uploads b again: no loss.
What is left is tL < tC < P3 < tD: the push committed its manifest and then found b present,
both between gc's last listing of the manifests and its delete of b taking effect. Listing
them again right before each delete shrinks that window to gc's one DELETE request (plus
reading any manifest new to the listing), against at least two sequential requests of the
push (its manifest PUT, then its HEAD of b). It cannot be shrunk to nothing without a delete
conditional on the last-modified time (S3 has none for general-purpose buckets) or a lock.
Without A1 (a push slower than the grace period), P3 still repairs a deletion that took effect
before it; re-running the push repairs later ones. `--grace-s 0` gives up the argument: use it
only while no push runs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from checkpoint.errors import NotFound, VerificationFailed
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import Manifest
from checkpoint.remote import DEFAULT_GRACE_S, Remote, blob_key

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


def stale_blobs(
    modified: Mapping[str, datetime], live: Set[str], cutoff: datetime
) -> tuple[str, ...]:
    """The blobs gc may delete: named by no kept manifest (`live`) and last modified before
    `cutoff` (now - grace). Younger ones may be about to be named by a push in flight."""
    return tuple(sorted(key for key, at in modified.items() if key not in live and at < cutoff))


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
    grace_s: float = DEFAULT_GRACE_S,
    now: Callable[[], datetime] = _utcnow,
    dry_run: bool = False,
) -> GcPlan:
    """Delete remote manifests outside the plan first (so no reader finds a version whose
    blobs are gone), then blobs that no manifest names and that were last modified more than
    `grace_s` ago; see the module docstring for why a concurrent push loses nothing."""
    if grace_s < 0:
        raise ValueError("grace_s must be >= 0")
    cutoff = now() - timedelta(seconds=grace_s)
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
    kept = {v: manifests[v] for v in decided.keep}
    live = {blob_key(e.sha256) for m in kept.values() for e in m.files.values()}
    modified = remote.store.list_modified("blobs/")
    stale = stale_blobs(modified, live, cutoff)
    deleted = 0
    for key in stale:
        live |= _named_by_new_manifests(remote, kept)
        if key not in live:
            remote.store.delete(key)
            deleted += 1
    young = sum(1 for key, at in modified.items() if key not in live and at >= cutoff)
    log.info(
        "remote gc: %d unreferenced blobs deleted, %d kept as younger than the grace period "
        "(%.0f s)",
        deleted,
        young,
        grace_s,
    )
    return decided


def _named_by_new_manifests(remote: Remote, seen: dict[str, Manifest]) -> set[str]:
    """Blob keys named by committed manifests not in `seen` (pushed since gc listed them, or
    pushed again after gc deleted them), which are added to it."""
    named = set()
    for version in remote.versions():
        if version in seen:
            continue
        try:
            seen[version] = remote.manifest(version)
        except NotFound:  # deleted again since listed
            continue
        log.info("version=%s committed during gc: its blobs are kept", version)
        named |= {blob_key(e.sha256) for e in seen[version].files.values()}
    return named
