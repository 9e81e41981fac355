"""The checkpoint store of a local cluster: a signing key pair, a `file://` remote, and the
operator's flash, so that `actionmesh up` serves signed, verified versions like production
and can roll them forward and back (`actionmesh ckpt promote --remote ... --etcd ...`)."""

from __future__ import annotations

import getpass
from pathlib import Path

from checkpoint.blobstore import open_blobstore
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    keygen,
    load_private_key,
    load_public_key,
)
from checkpoint.remote import Remote
from service.model import weights


class LocalCheckpoints:
    """remote_url: the remote store (s3://... for an S3 endpoint); default a `file://` folder
    under root."""

    def __init__(self, root: Path, remote_url: str | None = None) -> None:
        self.root = root
        self.key_dir = root / "keys"
        if not (self.key_dir / PRIVATE_KEY_NAME).exists():
            keygen(self.key_dir)
        self.public_key = self.key_dir / PUBLIC_KEY_NAME
        self.private_key = self.key_dir / PRIVATE_KEY_NAME
        if remote_url is None:
            remote_url = (root / "remote").resolve().as_uri()
            (root / "remote").mkdir(parents=True, exist_ok=True)
        self.remote_url = remote_url
        self.remote = Remote(open_blobstore(self.remote_url))
        self.flash = LocalFlash(root / "operator-flash", [load_public_key(self.public_key)])

    def publish(self, weights_dir: Path, *, promote: bool) -> str:
        """Snapshot the weights in `weights_dir` as a signed version, push it, and (with
        `promote`) make it the remote CURRENT; the version id."""
        info = weights.read_info(weights_dir)
        if info.version not in self.flash.versions():
            self.flash.create(
                weights_dir,
                info.version,
                info.config.model_dump(),
                creator=f"{getpass.getuser()}@local-cluster",
                private_key=load_private_key(self.private_key),
            )
        self.remote.push(self.flash, info.version)
        if promote:
            self.remote.promote(info.version)
        return info.version
