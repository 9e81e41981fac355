"""Secrets from files in a mounted folder (the `secrets_dir` setting), never from the command
line, where every user of the machine can read them (/proc/<pid>/cmdline, `ps`)."""

from __future__ import annotations

from pathlib import Path

REDIS_PASSWORD = "redis-password"  # the session store's password
IDENTITIES = "identities.toml"  # the identities file (service/runtime/identities_file.py)


def redis_password_path(redis_password_file: Path | None, secrets_dir: Path | None) -> Path | None:
    """--redis-password-file, else <secrets_dir>/redis-password when it exists."""
    if redis_password_file is not None:
        return redis_password_file
    if secrets_dir is not None and (secrets_dir / REDIS_PASSWORD).is_file():
        return secrets_dir / REDIS_PASSWORD
    return None


def identities_path(identities_file: Path | None, secrets_dir: Path | None) -> Path | None:
    """--identities-file, else <secrets_dir>/identities.toml when it exists."""
    if identities_file is not None:
        return identities_file
    if secrets_dir is not None and (secrets_dir / IDENTITIES).is_file():
        return secrets_dir / IDENTITIES
    return None
