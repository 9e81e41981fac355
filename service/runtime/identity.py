"""Who is calling: one function, `caller_identity`, for every server that checks callers.

A caller proves who it is with its client certificate (mTLS: the peer's subject CN, or else
its SAN URI, as gRPC's auth context reports them, present only on TLS channels) or with a
bearer token (`authorization: Bearer <token>` metadata) whose SHA-256 is in the identities
file (service/runtime/identities_file.py). Which of the two a server accepts is its `auth`
setting. The identity's scopes say what it may do (`Scope`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

AuthMode = Literal["off", "token", "mtls", "any"]
AUTH_MODES: tuple[AuthMode, ...] = ("off", "token", "mtls", "any")

AUTHORIZATION_KEY = "authorization"  # gRPC metadata keys are lower case
BEARER = "bearer "
CN_KEY = "x509_common_name"
SAN_KEY = "x509_subject_alternative_name"


class Scope(enum.Enum):
    STEP = "step"  # open, step, get and close its own sessions
    ADMIN = "admin"  # any session; drain
    CHECKPOINT = "checkpoint"  # the checkpoint verbs that write


@dataclass(frozen=True)
class Identity:
    name: str
    scopes: frozenset[Scope]
    via: Literal["certificate", "token"]

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def may_use(self, owner: str) -> bool:
        """A session belongs to the identity that opened it; an admin may use any."""
        return Scope.ADMIN in self.scopes or owner == self.name


class Unauthenticated(Exception):
    """No acceptable proof of identity came with the call; the message says what was wrong
    (never the token itself)."""


class Directory(Protocol):
    """What `caller_identity` needs of the identities file."""

    def by_token(self, token: str) -> Identity | None: ...

    def certificate_identity(self, name: str) -> Identity: ...


class CallContext(Protocol):
    """The part of grpc.ServicerContext identity comes from (a fake in unit tests)."""

    # At run time each value is a list of bytes (typeshed says bytes: both are read).
    def auth_context(self) -> Mapping[str, Any]: ...

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...


def caller_identity(
    context: CallContext, mode: AuthMode, directory: Directory | None
) -> Identity | None:
    """The caller's identity under `mode`; None when auth is off. Raises Unauthenticated when
    auth is on and the call proves no identity `mode` accepts."""
    if mode == "off":
        return None
    if mode in ("mtls", "any"):
        name = certificate_name(context.auth_context())
        if name is not None:
            if directory is None:
                raise Unauthenticated("this server has no identities file to look scopes up in")
            return directory.certificate_identity(name)
    if mode in ("token", "any"):
        token = bearer_token(context.invocation_metadata() or ())
        if token is not None:
            found = directory.by_token(token) if directory is not None else None
            if found is None:
                raise Unauthenticated(
                    f"bearer token {short_secret(token)}... is not in this server's identities file"
                )
            return found
    wanted = {
        "mtls": "a client certificate (mTLS)",
        "token": "an `authorization: Bearer <token>` header",
        "any": "a client certificate (mTLS) or an `authorization: Bearer <token>` header",
    }[mode]
    raise Unauthenticated(f"this server requires {wanted}; none came with the call")


def certificate_name(auth: Mapping[str, Any]) -> str | None:
    """The verified peer certificate's subject CN, else its first URI SAN; None without one
    (a plaintext channel, or TLS without a client certificate)."""
    for value in _values(auth.get(CN_KEY)):
        if value:
            return value
    for value in _values(auth.get(SAN_KEY)):
        if "://" in value:
            return value
    return None


def _values(raw: object) -> list[str]:
    """An auth context property's values as text (a list of bytes, or one bytes value)."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list | tuple) else [raw]
    return [_text(v).strip() for v in items if isinstance(v, str | bytes)]


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() == AUTHORIZATION_KEY:
            text = _text(value)
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip() or None
    return None


def short_secret(secret: str) -> str:
    """What a log line or message may show of a token: enough to tell two apart, too little
    to use."""
    return secret[:6]


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
