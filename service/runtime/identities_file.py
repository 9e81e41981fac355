"""The identities file: who may call, with which scopes, proven by which bearer token.

TOML; tokens are stored as their SHA-256 (hex), never as themselves:

    [[token]]                      # one per bearer token (an identity may have several)
    identity = "robot-7"
    scopes = ["step"]
    sha256 = "9f86d08..."          # sha256 of the token's UTF-8 bytes, 64 hex digits
    created = "2026-12-04T05:00:00Z"   # optional, informative

    [[certificate]]                # a certificate identity (its CN) whose scopes are not
    identity = "ops-console"       # the server's cert_default_scopes
    scopes = ["admin"]

`actionmesh token add` appends a [[token]] entry and prints the token once. The file is
re-read when it changes on disk (checked at most once a second), so tokens are added and
revoked without a restart; a file that no longer parses keeps the last good one in force.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from service.runtime.identity import Identity, Scope

log = logging.getLogger(__name__)

IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+=-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
RELOAD_EVERY_S = 1.0
TOKEN_BYTES = 32


class IdentitiesFileError(ValueError):
    """The identities file cannot be used; the message is one line naming the entry."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def parse_scopes(names: Sequence[str], where: str) -> frozenset[Scope]:
    known = {s.value: s for s in Scope}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise IdentitiesFileError(
            f"{where}: scopes must be a non-empty list of {', '.join(known)}; got {list(names)}"
        )
    return frozenset(known[n] for n in names)


def check_identity_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not IDENTITY_NAME.fullmatch(name):
        raise IdentitiesFileError(
            f"{where}: identity must be 1-128 letters, digits or ._@:/+=- starting with a letter "
            f"or digit; got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Identities:
    """One parse of the file: token hash -> identity, certificate name -> identity."""

    tokens: dict[str, Identity]
    certificates: dict[str, Identity]

    @classmethod
    def parse(cls, text: str, source: str) -> Identities:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise IdentitiesFileError(f"{source} is not valid TOML: {exc}") from exc
        unknown = sorted(set(data) - {"token", "certificate"})
        if unknown:
            raise IdentitiesFileError(
                f"{source}: unknown table {unknown[0]!r}; use [[token]] or [[certificate]]"
            )
        tokens: dict[str, Identity] = {}
        for i, entry in enumerate(_entries(data, "token", source)):
            where = f"{source}: [[token]] #{i + 1}"
            digest = entry.get("sha256")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise IdentitiesFileError(f"{where}: sha256 must be 64 lower-case hex digits")
            if digest in tokens:
                raise IdentitiesFileError(f"{where}: the same token hash is listed twice")
            tokens[digest] = _identity(entry, where, "token")
        certificates: dict[str, Identity] = {}
        for i, entry in enumerate(_entries(data, "certificate", source)):
            where = f"{source}: [[certificate]] #{i + 1}"
            found = _identity(entry, where, "certificate")
            if found.name in certificates:
                raise IdentitiesFileError(f"{where}: identity {found.name!r} is listed twice")
            certificates[found.name] = found
        return cls(tokens, certificates)


def _entries(data: dict[str, Any], table: str, source: str) -> list[dict[str, Any]]:
    entries = data.get(table, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise IdentitiesFileError(f"{source}: {table} must be an array of tables, [[{table}]]")
    return entries


def _identity(entry: dict[str, Any], where: str, via: Literal["certificate", "token"]) -> Identity:
    allowed = {"identity", "scopes"} | ({"sha256", "created"} if via == "token" else set())
    extra = sorted(set(entry) - allowed)
    if extra:
        raise IdentitiesFileError(f"{where}: unknown key {extra[0]!r}")
    name = check_identity_name(entry.get("identity"), where)
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise IdentitiesFileError(f"{where}: scopes must be a list of strings")
    return Identity(name, parse_scopes(scopes, where), via)


def read_identities(path: Path) -> Identities:
    try:
        text = path.read_text()
    except OSError as exc:
        raise IdentitiesFileError(
            f"cannot read identities file {path}: {exc.strerror or exc}"
        ) from exc
    return Identities.parse(text, str(path))


class IdentitiesFile:
    """The identities file as a caller_identity Directory, re-read when it changes. Without
    a file (mTLS only): no tokens, every certificate identity with the default scopes."""

    def __init__(self, path: Path | None, default_certificate_scopes: frozenset[Scope]) -> None:
        self.path, self.default_scopes = path, default_certificate_scopes
        self._lock = threading.Lock()
        # a bad file at start is the caller's error (IdentitiesFileError)
        self._identities = read_identities(path) if path is not None else Identities({}, {})
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()

    def tokens(self) -> dict[str, Identity]:
        """Token hash -> identity, as in force now."""
        return self._current().tokens

    def by_token(self, token: str) -> Identity | None:
        return self._current().tokens.get(token_hash(token))

    def certificate_identity(self, name: str) -> Identity:
        listed = self._current().certificates.get(name)
        return listed or Identity(name, self.default_scopes, "certificate")

    def _current(self) -> Identities:
        now = time.monotonic()
        with self._lock:
            if self.path is None or now - self._checked < RELOAD_EVERY_S:
                return self._identities
            self._checked = now
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._identities = read_identities(self.path)
                    log.info(
                        "identities file %s reloaded: %d tokens, %d certificate identities",
                        self.path,
                        len(self._identities.tokens),
                        len(self._identities.certificates),
                    )
                except IdentitiesFileError as exc:
                    log.error("%s; the previous identities stay in force", exc)
            return self._identities


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def token_entry(identity: str, scopes: frozenset[Scope], digest: str) -> str:
    """One [[token]] entry as TOML text."""
    names = ", ".join(f'"{s.value}"' for s in sorted(scopes, key=lambda s: s.value))
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'\n[[token]]\nidentity = "{identity}"\nscopes = [{names}]\nsha256 = "{digest}"\n'
        f'created = "{created}"\n'
    )


def append_token(path: Path, identity: str, scopes: frozenset[Scope]) -> str:
    """A fresh token for `identity`: its hash appended to `path` (created 0600 if absent,
    checked to still parse), the token returned for the caller to print once."""
    check_identity_name(identity, "--identity")
    if path.exists():
        read_identities(path)  # refuse to append to a file that does not parse
    token = new_token()
    entry = token_entry(identity, scopes, token_hash(token))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(entry)
        f.flush()
        os.fsync(f.fileno())
    read_identities(path)
    return token
