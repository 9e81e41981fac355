"""Where weights come from on checkpoints (a shard's stage, the coordinator's student): the
remote CURRENT or a named version (with no remote, the local one), verified on this node's
flash and pulled when missing or bad there."""

from __future__ import annotations

import logging
from pathlib import Path

from checkpoint.blobstore import open_blobstore
from checkpoint.errors import CheckpointError, VerificationFailed
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import load_public_key
from checkpoint.remote import Remote, ensure_local
from service.model import weights
from service.runtime.settings import CheckpointSourceSettings

log = logging.getLogger(__name__)


def verified_weights(settings: CheckpointSourceSettings, flash_dir: Path) -> Path:
    """The directory of the version to serve at start; SystemExit with the reason if none."""
    try:
        return version_weights(settings, flash_dir, None)
    except CheckpointError as exc:
        raise SystemExit(f"no verified weights on {flash_dir}: {exc}") from exc


def version_weights(
    settings: CheckpointSourceSettings, flash_dir: Path, version: str | None
) -> Path:
    """The verified local directory of `version` (default: the remote CURRENT, else the local
    one), pulled from the remote when missing or bad on flash."""
    keys = [load_public_key(path) for path in settings.trusted_keys]
    flash = LocalFlash(flash_dir, keys, insecure=settings.insecure)
    remote = Remote(open_blobstore(settings.remote)) if settings.remote else None
    loaded = ensure_local(flash, remote, version)
    for bad in loaded.quarantined:
        log.error(
            "version=%s failed verification (%s); %s",
            bad.version,
            "; ".join(bad.problems),
            f"quarantined to {bad.quarantined_to}" if bad.quarantined_to else "left in place",
        )
    if not loaded.from_current:
        log.warning("version=%s served: CURRENT is missing or bad", loaded.version)
    advertised = weights.read_info(loaded.path).version
    if advertised != loaded.version:  # the shard advertises model.json's version
        raise VerificationFailed(
            f"shard: checkpoint version {loaded.version} holds weights of version {advertised}; "
            "create checkpoints with `actionmesh ckpt create`, which names them by their weights"
        )
    return loaded.path
