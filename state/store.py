"""The narrow interface every session store backend implements."""

from __future__ import annotations

from typing import Protocol

from state.session import CommitOutcome, SessionId, SessionRecord, StageIndex, StageState


class StoreUnavailable(Exception):
    """The store could not be reached after bounded retries; the caller may retry later."""


class SessionStore(Protocol):
    def create(self, record: SessionRecord) -> None:
        """Store a new session (seq 0). Raises ValueError if the id already exists."""

    def load(self, session_id: SessionId) -> SessionRecord | None:
        """The session as stored, or None when unknown or expired."""

    def commit(
        self,
        session_id: SessionId,
        expected_seq: int,
        new_seq: int,
        stage_states: dict[StageIndex, StageState],
        last_reply: bytes,
        ttl_s: float,
    ) -> CommitOutcome:
        """Atomically advance the session from expected_seq to new_seq and refresh its TTL."""

    def ttl_left_s(self, session_id: SessionId) -> float | None:
        """Seconds before the session expires, or None when unknown or expired."""

    def delete(self, session_id: SessionId) -> bool:
        """Remove everything of the session; True if it existed."""

    def ping(self) -> bool:
        """True when the backend answers."""

    def close(self) -> None:
        """Release connections."""
