"""Secrets from files in a mounted folder (the `secrets_dir` setting), never from the command
line, where every user of the machine can read them (/proc/<pid>/cmdline, `ps`)."""

from __future__ import annotations

from pathlib import Path

from state.redis_url import with_password

REDIS_PASSWORD = "redis-password"  # the session store's password
IDENTITIES = "identities.toml"  # the identities file (service/runtime/identities_file.py)


def read_secret(secrets_dir: Path | None, name: str) -> str | None:
    """The secret's text without its trailing newline, or None when the folder or the file is
    absent. An empty file is a mistake, not an empty password."""
    if secrets_dir is None:
        return None
    path = secrets_dir / name
    if not path.is_file():
        return None
    try:
        value = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise SystemExit(f"cannot read secret {path}: {exc.strerror or exc}") from exc
    if not value:
        raise SystemExit(f"secret {path} is empty")
    return value


def store_url(redis_url: str, secrets_dir: Path | None) -> str:
    """`redis_url` with the password from <secrets_dir>/redis-password, when there is one."""
    password = read_secret(secrets_dir, REDIS_PASSWORD)
    if password is None:
        return redis_url
    try:
        return with_password(redis_url, password)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def identities_path(identities_file: Path | None, secrets_dir: Path | None) -> Path | None:
    """--identities-file, else <secrets_dir>/identities.toml when it exists."""
    if identities_file is not None:
        return identities_file
    if secrets_dir is not None and (secrets_dir / IDENTITIES).is_file():
        return secrets_dir / IDENTITIES
    return None
