"""What can go wrong with a checkpoint, split by what the caller can do about it."""

from __future__ import annotations


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


class StoreUnavailable(CheckpointError):
    """The blob store could not be reached after bounded retries; try again later."""
