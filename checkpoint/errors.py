"""What can go wrong with a checkpoint, split by what the caller can do about it."""

from __future__ import annotations

QUOTE_LIMIT = 60


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """What an error message quotes of an input: its repr, cut to `limit` characters (a
    20 KB version id must not become a 20 KB error line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}...({len(text)} chars)"


class CheckpointError(Exception):
    """Base of every checkpoint failure."""


class NotFound(CheckpointError):
    """The version, object or key does not exist (locally or in the blob store)."""


class PreconditionFailed(CheckpointError):
    """A conditional write lost: the object changed since it was read (or already exists).
    Re-read the current value and decide again; do not blindly retry."""


class VersionConflict(CheckpointError):
    """A version id already exists with different content; choose another id."""


class VerificationFailed(CheckpointError):
    """Sizes, checksums or the signature of a version do not match its manifest."""


class InvalidInput(CheckpointError, ValueError):
    """An argument that cannot be used as given (a URL, key file, bucket name or version id):
    fix it and run again; retrying as is will not help."""


class StoreNotFound(NotFound):
    """The blob store itself (an S3 bucket) does not exist: not the same as a missing key."""


class NoSpace(CheckpointError):
    """Local flash has no room for a version (nothing of it is left behind): free space there
    (`ckpt gc`, or whatever filled the disk); a shard tries again by itself."""


class StoreUnavailable(CheckpointError):
    """The blob store could not be reached after bounded retries; try again later."""
