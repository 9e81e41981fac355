"""Fixtures the unit tests of checkpoints share: a signing key and a local flash trusting it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from checkpoint.local_flash import LocalFlash


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def flash(tmp_path: Path, key: Ed25519PrivateKey) -> LocalFlash:
    return LocalFlash(tmp_path / "flash", [key.public_key()])
