"""The narrow interface every session store backend implements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from state.session import CommitOutcome, SessionId, SessionRecord, StepCommit

# When the store calls made in this context must have answered (time.monotonic()); None: by the
# backend's own retry policy only. A context variable rather than an argument on every method:
# a step sets it once, and every store call the step makes (load, replay, commit, confirm)
# inherits it.
_ANSWER_BY: ContextVar[float | None] = ContextVar("actionmesh_store_answer_by", default=None)


class StoreUnavailable(Exception):
    """The store could not be reached after bounded retries; the caller may retry later."""


class DeadlineSpent(StoreUnavailable):
    """The call's `answer_by` deadline had passed before it was made: nothing was sent, so
    nothing about the store is known (the step ran out of time, the store did not fail)."""


class NotReplicated(StoreUnavailable):
    """The primary holds the write but fewer replicas than asked acknowledged it in time, so a
    failover could still lose it: do not acknowledge the step; a retry of the same seq finds the
    stored reply and confirms its replication (confirm_replicated) before answering."""


@contextmanager
def answer_by(deadline: float) -> Iterator[None]:
    """Store calls made inside (on this thread) answer by `deadline` (time.monotonic()) or raise
    StoreUnavailable then: a step's calls must not hold its worker after the robot gave up, and
    an early StoreUnavailable lets the robot fail over while it still has time."""
    token = _ANSWER_BY.set(deadline)
    try:
        yield
    finally:
        _ANSWER_BY.reset(token)


def answer_deadline() -> float | None:
    """The deadline `answer_by` set around this call, if any."""
    return _ANSWER_BY.get()


class SessionStore(Protocol):
    """Inside `answer_by(deadline)` every call answers or raises StoreUnavailable by the
    deadline; a commit given up that way may still land (its outcome is unknown: the caller
    must not acknowledge it, and a retry of the same seq finds the stored reply)."""

    def create(self, record: SessionRecord) -> None:
        """Store a new session (seq 0). Raises ValueError if the id already exists."""

    def load(self, session_id: SessionId) -> SessionRecord | None:
        """The session as stored, or None when unknown or expired."""

    def commit(self, session_id: SessionId, step: StepCommit) -> CommitOutcome:
        """Atomically advance the session from step.expected_seq to step.new_seq: states, reply,
        observation log (trimmed), anchor (set when a stage starts lagging, dropped once all
        are level again), TTL refreshed. With step.wait_replicas > 0, raises NotReplicated
        when a commit went through but fewer replicas acknowledged it within wait_timeout_s."""

    def confirm_replicated(self, session_id: SessionId, replicas: int, timeout_s: float) -> None:
        """Return once `replicas` replicas hold everything written to the session so far; raises
        NotReplicated after timeout_s. Call before answering with a stored reply of a session
        whose wait_replicas > 0: its commit may have been acknowledged by the primary only."""

    def observations(
        self, session_id: SessionId, first_seq: int, last_seq: int
    ) -> list[bytes] | None:
        """The logged observations of steps first_seq..last_seq, or None if the log no longer
        reaches back to first_seq."""

    def log_depth(self, session_id: SessionId) -> int:
        """How many observations the session's log holds."""

    def ttl_left_s(self, session_id: SessionId) -> float | None:
        """Seconds before the session expires, or None when unknown or expired."""

    def delete(self, session_id: SessionId) -> bool:
        """Remove everything of the session; True if it existed."""

    def reserve_for_owner(self, owner: str, session_id: SessionId, limit: int) -> bool:
        """Count `session_id` among `owner`'s open sessions if it holds fewer than `limit`
        (closed and expired ones are not counted); False when it already holds `limit`."""

    def release_for_owner(self, owner: str, session_id: SessionId) -> None:
        """No longer count `session_id` among `owner`'s open sessions."""

    def replicas(self) -> int:
        """Replicas connected to the primary now: the most `wait_replicas` can ask for."""

    def ping(self) -> bool:
        """True when the backend answers."""

    def close(self) -> None:
        """Release connections."""
