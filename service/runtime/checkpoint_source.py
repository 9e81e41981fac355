"""Where weights come from on checkpoints (a shard's stage, the coordinator's student): the
remote CURRENT or a named version (with no remote, the local one), verified on this node's
flash and pulled when missing or bad there.

At start, a node whose flash holds a verified version serves it at once and reconciles with
the remote afterwards (`reconcile`, in the background): a remote that is slow, unreachable or
holds a malformed CURRENT never delays serving what is already here. Only a node with nothing
good on flash waits for the remote (every remote operation is bounded by the store's
deadline, S3Options.deadline_s)."""

from __future__ import annotations

import logging
from pathlib import Path

from checkpoint import gc
from checkpoint.blobstore import open_blobstore
from checkpoint.errors import CheckpointError, NotFound, VerificationFailed
from checkpoint.local_flash import LoadResult, LocalFlash
from checkpoint.manifest import load_public_key
from checkpoint.remote import Remote, ensure_local
from service.model import weights_files
from service.runtime.settings import CheckpointSourceSettings

log = logging.getLogger(__name__)


def verified_weights(settings: CheckpointSourceSettings, flash_dir: Path) -> tuple[Path, bool]:
    """The directory of the version to serve at start, and whether the caller should
    reconcile with the remote (the version came from flash without asking it); SystemExit
    with the reason if there is none."""
    try:
        if settings.remote is None:
            return version_weights(settings, flash_dir, None), False
        try:
            loaded = _flash(settings, flash_dir).load_current()
        except NotFound:  # nothing good here: wait for the remote (within its deadline)
            return version_weights(settings, flash_dir, None), False
        log.info(
            "version=%s verified on local flash: serving it at once; reconciling with the "
            "remote %s in the background",
            loaded.version,
            settings.remote,
        )
        return _checked(loaded), True
    except CheckpointError as exc:
        raise SystemExit(f"no verified weights on {flash_dir}: {exc}") from exc


def reconcile(settings: CheckpointSourceSettings, flash_dir: Path, serving: str) -> str | None:
    """After serving `serving` from flash: the remote CURRENT when it names another version,
    pulled and verified on flash (local CURRENT then names it); None when they agree or the
    remote cannot say (unreachable, malformed CURRENT, a failed pull), with a log line."""
    try:
        target = _remote(settings).current() if settings.remote else None
        if target is None or target == serving:
            log.info("version=%s is the remote CURRENT (%s): in step", serving, target or "unset")
            return None
        version_weights(settings, flash_dir, target, serving)
    except CheckpointError as exc:
        log.warning(
            "could not reconcile with the remote %s, still serving version=%s from local flash: %s",
            settings.remote,
            serving,
            exc,
        )
        return None
    log.info("version=%s is the remote CURRENT (serving %s): pulled and verified", target, serving)
    return target


def _flash(settings: CheckpointSourceSettings, flash_dir: Path) -> LocalFlash:
    keys = [load_public_key(path) for path in settings.trusted_keys]
    return LocalFlash(flash_dir, keys, insecure=settings.insecure)


def _remote(settings: CheckpointSourceSettings) -> Remote:
    assert settings.remote is not None
    return Remote(open_blobstore(settings.remote))


def version_weights(
    settings: CheckpointSourceSettings,
    flash_dir: Path,
    version: str | None,
    serving: str | None = None,
) -> Path:
    """The verified local directory of `version` (default: the remote CURRENT, else the local
    one), pulled from the remote when missing or bad on flash. Before a pull, the flash keeps
    only `flash_keep_versions` newest versions besides `serving`, `version` and CURRENT."""
    flash = _flash(settings, flash_dir)
    remote = _remote(settings) if settings.remote else None
    if remote is not None and version is not None and not flash.path(version).is_dir():
        # collect_local logs each version it removes.
        gc.collect_local(
            flash, settings.flash_keep_versions, in_use=[version, *filter(None, [serving])]
        )
    return _checked(ensure_local(flash, remote, version))


def _checked(loaded: LoadResult) -> Path:
    """`loaded`'s directory, once its weights are known to be the version it is filed as."""
    for bad in loaded.quarantined:
        log.error(
            "version=%s failed verification (%s); %s",
            bad.version,
            "; ".join(bad.problems),
            f"quarantined to {bad.quarantined_to}" if bad.quarantined_to else "left in place",
        )
    if not loaded.from_current:
        log.warning("version=%s served: CURRENT is missing or bad", loaded.version)
    advertised = weights_files.read_info(loaded.path).version
    if advertised != loaded.version:  # the shard advertises model.json's version
        raise VerificationFailed(
            f"shard: checkpoint version {loaded.version} holds weights of version {advertised}; "
            "create checkpoints with `actionmesh ckpt create`, which names them by their weights"
        )
    return loaded.path
