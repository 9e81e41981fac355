"""A local cluster whose coordinator requires bearer tokens (auth = token): an identities file
with one token per role, the metadata that sends each, and a count of stored sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from service.runtime.identities_file import append_token
from service.runtime.identity import Scope

Metadata = tuple[tuple[str, str], ...]

# Who the tests call as: robots with the step scope, an operator, a CI job that may only write
# checkpoints.
ROLES = {
    "alice": frozenset({Scope.STEP}),
    "bob": frozenset({Scope.STEP}),
    "ops": frozenset({Scope.ADMIN}),
    "ci": frozenset({Scope.CHECKPOINT}),
}


@dataclass(frozen=True)
class Tokens:
    path: Path
    by_identity: dict[str, str]

    def metadata(self, identity: str) -> Metadata:
        return (("authorization", f"Bearer {self.by_identity[identity]}"),)


def make_identities(directory: Path) -> Tokens:
    path = directory / "identities.toml"
    tokens = {name: append_token(path, name, scopes) for name, scopes in ROLES.items()}
    return Tokens(path, tokens)


def stored_sessions(redis_url: str, password: str | None = None) -> set[str]:
    """The ids of every session the store holds now."""
    client = redis.Redis.from_url(redis_url, password=password)
    try:
        return {
            key.decode().split("{", 1)[1].split("}", 1)[0]
            for key in client.scan_iter(match="am:{*}:session")
        }
    finally:
        client.close()
