"""What can go wrong in a step, split by what the caller can do about it."""

from __future__ import annotations

from state.session import short_id


class ActionmeshError(Exception):
    """Base: the message is meant for the robot engineer reading it."""


class InvalidInput(ActionmeshError):
    """Your input is wrong: fix it, do not retry as is. `field` names the request field at
    fault (the error's BadRequest field violation), when there is one."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class SessionNotFound(ActionmeshError):
    """Unknown, closed or expired session: open a new one."""


class SeqConflict(ActionmeshError):
    """The step's seq is neither the next one nor a retry of the last one."""

    def __init__(self, session_id: str, current_seq: int, got_seq: int) -> None:
        super().__init__(
            f"session={short_id(session_id)} is at seq {current_seq}; got seq {got_seq}. Send seq "
            f"{current_seq + 1} for the next step, or {current_seq} to fetch the last reply again."
        )
        self.current_seq = current_seq


class NotEnoughReplicas(ActionmeshError):
    """The session asks for more store replicas than are connected: change the request or the
    deployment, retrying will not help."""


class Unavailable(ActionmeshError):
    """Nothing could serve this step now; the session was not advanced: retry the same seq."""


class Draining(Unavailable):
    """This coordinator is draining (an admin's Drain, or SIGTERM): go to another one at once;
    the session was not advanced."""


class StoreUnreachable(Unavailable):
    """This coordinator could not reach the session store in time (or at all); the session was
    not advanced, or a commit's outcome is unknown: retry the same seq, on another coordinator
    at once (it may still reach the store)."""


class DeadlineExceeded(ActionmeshError):
    """The step could not finish before its deadline; the session was not advanced."""


class Overloaded(ActionmeshError):
    """Shed: nothing can serve this step before its deadline now; retry after the hint."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotAuthenticated(ActionmeshError):
    """The call proved no identity this server accepts (auth is on): send a token or a client
    certificate."""


class PermissionDenied(ActionmeshError):
    """The caller is known but may not do this: another identity's session, or a scope it
    lacks."""


class RateLimited(Overloaded):
    """The caller's identity is over its steps-per-second budget; retry after the hint."""


class TooManySessions(ActionmeshError):
    """The caller's identity holds as many open sessions as it may: close one first."""
