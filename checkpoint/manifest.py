"""A version's manifest: what files it holds (sha256 + size), its model config, its lineage,
and an ed25519 signature over canonical JSON bytes. Keys live in PEM files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from checkpoint.durable import atomic_write
from checkpoint.errors import CheckpointError, InvalidInput, VerificationFailed, shown

MANIFEST_NAME = "manifest.json"
PRIVATE_KEY_NAME = "checkpoint-signing.key"
PUBLIC_KEY_NAME = "checkpoint-signing.pub"
FORMAT = 1

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_id(value: str) -> bool:
    return bool(_ID.match(value)) and ".." not in value


def check_id(value: str, what: str = "version id") -> str:
    """Version ids and file names become paths and object keys: plain names only (no '/',
    no '..'); InvalidInput (a ValueError) otherwise."""
    if not is_id(value):
        raise InvalidInput(
            f"invalid {what} {shown(value)}: use up to 128 letters, digits, '.', '_', '-' "
            "(no '/' or '..')"
        )
    return value


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    version: str
    config: Mapping[str, Any]
    files: Mapping[str, FileEntry]
    created_at: datetime
    creator: str
    parent: str | None = None
    signer: str | None = None
    signature: str | None = field(default=None, compare=False)

    def unsigned_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "config": dict(self.config),
            "files": {
                name: {"sha256": entry.sha256, "size": entry.size}
                for name, entry in sorted(self.files.items())
            },
            "created_at": self.created_at.astimezone(UTC).isoformat(),
            "creator": self.creator,
            "parent": self.parent,
            "signer": self.signer,
        }

    def signing_bytes(self) -> bytes:
        """Canonical JSON of everything but the signature: sorted keys, no whitespace."""
        return json.dumps(
            self.unsigned_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()

    def to_json(self) -> bytes:
        doc = self.unsigned_dict()
        doc["signature"] = self.signature
        return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate a manifest; raises VerificationFailed for anything malformed."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {doc.get('format')!r}")
        files = {
            check_id(name, "file name"): _entry(raw) for name, raw in dict(doc["files"]).items()
        }
        config = doc["config"]
        if not isinstance(config, dict):
            raise ValueError("config is not a JSON object")
        created_at = datetime.fromisoformat(doc["created_at"])
        if created_at.tzinfo is None:
            raise ValueError("created_at has no time zone")
        return Manifest(
            version=check_id(str(doc["version"])),
            config=config,
            files=files,
            created_at=created_at,
            creator=str(doc["creator"]),
            parent=None if doc["parent"] is None else check_id(str(doc["parent"])),
            signer=None if doc.get("signer") is None else str(doc["signer"]),
            signature=None if doc.get("signature") is None else str(doc["signature"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationFailed(f"malformed manifest: {exc}") from exc


def _entry(raw: Any) -> FileEntry:
    sha, size = raw["sha256"], raw["size"]
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ValueError(f"bad sha256 {sha!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"bad size {size!r}")
    return FileEntry(sha256=sha, size=size)


def hash_file(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=digest.hexdigest(), size=size)


def build_manifest(
    source: Path,
    version: str,
    config: Mapping[str, Any],
    *,
    creator: str,
    parent: str | None = None,
    created_at: datetime | None = None,
) -> Manifest:
    """An unsigned manifest of every regular file directly in `source` (weights are opaque
    bytes here), except a stray manifest.json."""
    files = {
        check_id(path.name, "file name"): hash_file(path)
        for path in sorted(source.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    if not files:
        raise CheckpointError(f"version={version} source {source} holds no files")
    return Manifest(
        version=check_id(version),
        config=dict(config),
        files=files,
        created_at=created_at or datetime.now(UTC),
        creator=creator,
        parent=None if parent is None else check_id(parent),
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def sign(manifest: Manifest, private_key: Ed25519PrivateKey) -> Manifest:
    stamped = replace(manifest, signer=key_id(private_key.public_key()), signature=None)
    signature = private_key.sign(stamped.signing_bytes())
    return replace(stamped, signature=base64.b64encode(signature).decode())


def verify_signature(manifest: Manifest, public_key: Ed25519PublicKey) -> bool:
    """True when `manifest` carries a valid signature by `public_key`."""
    if manifest.signature is None:
        return False
    try:
        public_key.verify(base64.b64decode(manifest.signature), manifest.signing_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def keygen(directory: Path) -> tuple[Path, Path]:
    """Write a new ed25519 key pair as PEM (private key mode 0600); refuses to overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise CheckpointError(f"{path} exists; remove it or choose another directory")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
        handle.flush()
        os.fsync(handle.fileno())
    atomic_write(public_path, public_pem)
    return private_path, public_path


def _key_bytes(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise InvalidInput(f"the {what} {path} is empty")
    return data


def _parses(load: Any, data: bytes) -> bool:
    try:
        load(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM file; InvalidInput saying what the file is instead."""
    data = _key_bytes(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if _parses(serialization.load_pem_public_key, data):
            raise InvalidInput(
                f"{path} is a public key: sign with the private key ({PRIVATE_KEY_NAME})"
            ) from None
        raise InvalidInput(f"{path} is not a PEM private key (see `ckpt keygen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} is not an ed25519 private key (see `ckpt keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An ed25519 public key from a PEM file; InvalidInput saying what the file is instead."""
    data = _key_bytes(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if _parses(lambda raw: serialization.load_pem_private_key(raw, password=None), data):
            raise InvalidInput(
                f"{path} is a private key: trust the public key ({PUBLIC_KEY_NAME}), and keep "
                "the private one off the nodes"
            ) from None
        raise InvalidInput(f"{path} is not a PEM public key (see `ckpt keygen`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{path} is not an ed25519 public key (see `ckpt keygen`)")
    return key
