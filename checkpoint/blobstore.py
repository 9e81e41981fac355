"""The narrow interface of a blob store, and the one place that picks a backend from a URL.

Keys are relative, '/'-separated (`blobs/<sha256>`, `versions/<id>/manifest.json`, `CURRENT`).
Backends: `file:///path` (local_blobstore.py) and `s3://bucket/prefix` (s3_blobstore.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from checkpoint.errors import InvalidInput, PreconditionFailed, shown

__all__ = ["BlobStore", "PreconditionFailed", "S3Options", "Tagged", "check_key", "open_blobstore"]


@dataclass(frozen=True)
class Tagged:
    """A small object's bytes and the etag a conditional write must name to replace it."""

    data: bytes
    etag: str


class BlobStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` at `key` (replacing it). Readers see the old or the new object."""

    def put_file(self, key: str, path: Path) -> None:
        """Upload a (possibly large) file to `key`."""

    def get_file(self, key: str, path: Path) -> None:
        """Download `key` into `path`. Raises NotFound."""

    def get(self, key: str) -> Tagged | None:
        """A small object's bytes and etag, or None when absent."""

    def exists(self, key: str) -> bool: ...

    def touch(self, key: str) -> bool:
        """Set `key`'s last-modified time to now, keeping its bytes; False when it is absent.
        What a push does to a blob it reuses, so that gc's grace period protects it."""

    def list(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, sorted."""

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        """Every key starting with `prefix` and its last-modified time (timezone-aware, as the
        store's clock saw it)."""

    def delete(self, key: str) -> None:
        """Remove `key`; absent keys are fine."""

    def put_if(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write a small object only if it still has etag `if_match`, or (`if_none_match`) does
        not exist yet. Exactly one condition. Returns the new etag; raises PreconditionFailed."""


@dataclass(frozen=True)
class S3Options:
    """Explicit S3 settings; anything left None comes from the usual boto3 sources
    (environment, ~/.aws/config and credentials, instance metadata).

    `deadline_s` bounds every operation against a store that does not answer: each of the
    `max_attempts` attempts gets connect and read timeouts (attempt_timeouts) such that all
    of them timing out, plus the longest waits between them, add up to it. A transfer that
    keeps receiving bytes is not cut: each read waits at most the read timeout."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_chunksize_bytes: int = 16 * 1024 * 1024
    deadline_s: float = 10.0
    max_attempts: int = 3
    connect_timeout_s: float = 1.0  # at most this, and at most half of an attempt
    retry_max_wait_s: float = 0.5


def attempt_timeouts(options: S3Options) -> tuple[float, float]:
    """(connect, read) timeouts of one attempt: `max_attempts` attempts that each time out,
    plus the longest waits between them, take `deadline_s`. InvalidInput if that leaves an
    attempt no time."""
    waits = (options.max_attempts - 1) * options.retry_max_wait_s
    per_attempt = (options.deadline_s - waits) / options.max_attempts
    if not (options.max_attempts >= 1 and per_attempt >= 0.1 and math.isfinite(per_attempt)):
        raise InvalidInput(
            f"S3 deadline_s={options.deadline_s} leaves no time for {options.max_attempts} "
            f"attempts {options.retry_max_wait_s}s apart: use at least "
            f"{waits + 0.1 * options.max_attempts:.1f}"
        )
    connect = min(options.connect_timeout_s, per_attempt / 2)
    return connect, per_attempt - connect


# S3's rules for bucket names: 3-63 lowercase letters, digits, '.' and '-', starting and ending
# with a letter or digit, no '..'.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_PARAMETERS = ("endpoint_url", "region", "profile", "deadline_s")


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"invalid blob key {shown(key)}")
    return key


def check_bucket(bucket: str) -> str:
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidInput(
            f"invalid S3 bucket name {shown(bucket)}: 3-63 lowercase letters, digits, '.' and "
            "'-', starting and ending with a letter or digit"
        )
    return bucket


def check_endpoint(url: str) -> str:
    parts = urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise InvalidInput(
            f"invalid S3 endpoint_url {shown(url)}: use http://host:port or https://host"
        )
    return url


def check_conditions(if_match: str | None, if_none_match: bool) -> None:
    if (if_match is None) == (not if_none_match):
        raise ValueError("put_if needs exactly one of if_match=<etag> or if_none_match=True")


def open_blobstore(url: str, s3: S3Options | None = None) -> BlobStore:
    """`file:///abs/path` or `s3://bucket[/prefix][?endpoint_url=...&region=...&profile=...
    &deadline_s=...]`; query parameters override the matching fields of `s3`. InvalidInput (a ValueError) for a URL
    that cannot name a store; nothing is contacted here."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput(f"file URL {shown(url)} must be file:///absolute/path")
        from checkpoint.local_blobstore import LocalBlobStore

        return LocalBlobStore(Path(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidInput(f"S3 URL {shown(url)} names no bucket: use s3://bucket/prefix")
        bucket = check_bucket(parts.netloc)
        options = _with_query(s3 or S3Options(), parts.query)
        if options.endpoint_url is not None:
            check_endpoint(options.endpoint_url)
        from checkpoint.s3_blobstore import S3BlobStore

        return S3BlobStore(bucket, parts.path.strip("/"), options)
    raise InvalidInput(
        f"unsupported blob store URL {shown(url)}: use file:///path or s3://bucket/prefix"
    )


def _with_query(options: S3Options, query: str) -> S3Options:
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(params) - set(_S3_PARAMETERS)
    if unknown:
        raise InvalidInput(
            f"unknown S3 URL parameters {shown(sorted(unknown))}: use {', '.join(_S3_PARAMETERS)}"
        )
    deadline_s = options.deadline_s
    if "deadline_s" in params:
        try:
            deadline_s = float(params["deadline_s"])
        except ValueError:
            raise InvalidInput(
                f"S3 URL parameter deadline_s={shown(params['deadline_s'])} is not a number"
            ) from None
    chosen = replace(
        options,
        endpoint_url=params.get("endpoint_url", options.endpoint_url),
        region=params.get("region", options.region),
        profile=params.get("profile", options.profile),
        deadline_s=deadline_s,
    )
    attempt_timeouts(chosen)  # refuses a deadline that leaves an attempt no time
    return chosen
