"""Who may use the session API, within which limits: the `auth` setting, the identities file,
the scopes a call needs and each identity's step rate. Session ownership itself is checked
by the engine, which holds the session record."""

from __future__ import annotations

import time

from service.coordinator.step_errors import NotAuthenticated, PermissionDenied, RateLimited
from service.runtime.identity import (
    AuthMode,
    CallContext,
    Directory,
    Identity,
    Scope,
    Unauthenticated,
    caller_identity,
)
from service.runtime.rate_limit import RateLimiter

SESSION_SCOPES = frozenset({Scope.STEP, Scope.ADMIN})


class SessionAccess:
    def __init__(
        self, mode: AuthMode, directory: Directory | None, step_rate: RateLimiter | None
    ) -> None:
        self.mode, self.directory, self.step_rate = mode, directory, step_rate

    @classmethod
    def open_door(cls) -> SessionAccess:
        """Auth off: every call is served as before identities existed."""
        return cls("off", None, None)

    def caller(self, context: CallContext) -> Identity | None:
        """The caller, allowed to use the session API; None with auth off. Raises
        NotAuthenticated or PermissionDenied (a scope it lacks)."""
        try:
            identity = caller_identity(context, self.mode, self.directory)
        except Unauthenticated as exc:
            raise NotAuthenticated(str(exc)) from exc
        if identity is not None and not identity.scopes & SESSION_SCOPES:
            held = ", ".join(sorted(s.value for s in identity.scopes))
            raise PermissionDenied(
                f"identity {identity.name!r} has scopes [{held}]; the session API needs step "
                "(or admin)"
            )
        return identity

    def admin(self, context: CallContext) -> Identity | None:
        """The caller, allowed an admin call (drain); None with auth off, where anyone who
        reaches the port may. Raises NotAuthenticated or PermissionDenied (no admin scope)."""
        try:
            identity = caller_identity(context, self.mode, self.directory)
        except Unauthenticated as exc:
            raise NotAuthenticated(str(exc)) from exc
        if identity is not None and not identity.has(Scope.ADMIN):
            held = ", ".join(sorted(s.value for s in identity.scopes))
            raise PermissionDenied(
                f"identity {identity.name!r} has scopes [{held}]; this needs admin"
            )
        return identity

    def step_allowed(self, caller: Identity | None) -> None:
        """RateLimited when the caller is over its steps per second."""
        if caller is None or self.step_rate is None:
            return
        wait_s = self.step_rate.take(caller.name, time.monotonic())
        if wait_s > 0:
            raise RateLimited(
                f"identity {caller.name!r} is over its {self.step_rate.rate:g} steps/s "
                f"(coordinator setting identity_steps_per_s); retry after {wait_s:.3f} s",
                retry_after_s=wait_s,
            )
