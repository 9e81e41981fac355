"""Admission around a step: fallback.admission's controller, with the coordinator's errors
and metrics. A shed step costs nothing downstream and says when to retry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fallback.admission import AdmissionController, Shed, Ticket
from fallback.priority import Priority
from service.coordinator.step_errors import DeadlineExceeded, Overloaded
from service.runtime.metrics import ADMISSION_QUEUED, SHEDS


class AdmissionGate:
    def __init__(self, controller: AdmissionController) -> None:
        self.controller = controller

    @contextmanager
    def admitted(
        self,
        what: str,
        priority: Priority,
        client_id: str,
        deadline: float,
        best_latency_s: float | None,
    ) -> Iterator[None]:
        """Runs the block once the step holds a slot; Overloaded when it is shed (now, or
        displaced from the queue by a more urgent step), DeadlineExceeded when its turn does
        not come in time."""
        now = time.monotonic()
        if now >= deadline:  # spent before admission (a slow store): a timeout, not a shed
            raise DeadlineExceeded(
                f"{what}: the deadline passed before the step was admitted; the session was not "
                "advanced, retry the same seq"
            )
        got = self.controller.admit(
            priority, client_id, deadline, now, best_latency_s=best_latency_s
        )
        if isinstance(got, Shed):
            raise _shed(what, got)
        ADMISSION_QUEUED.set(self.controller.load().queued)
        try:
            _wait_for_turn(what, got, deadline)
            started = time.monotonic()
            yield
            got.release(time.monotonic() - started)
        finally:
            got.release()  # idempotent: frees the slot or the queue place if still held


def _wait_for_turn(what: str, ticket: Ticket, deadline: float) -> None:
    if not ticket.wait(max(0.0, deadline - time.monotonic())):
        if ticket.shed is not None:
            raise _shed(what, ticket.shed)
        raise DeadlineExceeded(
            f"{what}: queued for admission until its deadline; the session was not advanced, "
            "retry the same seq"
        )


def _shed(what: str, shed: Shed) -> Overloaded:
    SHEDS.labels(shed.reason.value, shed.priority.name).inc()
    return Overloaded(
        f"{what}: shed ({shed.reason.value}: {shed.detail}); the session was not advanced, "
        f"retry the same seq after {shed.retry_after_s:.3f} s",
        retry_after_s=shed.retry_after_s,
    )
