"""Admission control: admit, queue or shed a step before any work is spent on it.

Capacity is `max_inflight` steps served at once (a slot each) plus a queue of at most
`max_queue` steps waiting for a slot, most urgent priority first, first come first served
within a priority. `admit` answers at once with a `Ticket` (running, or queued) or a `Shed`:

- deadline: refused now rather than timed out later when a step that must queue would not
  finish before its deadline (a step that finds a free slot is only refused once its
  deadline has passed: without contention, trying is the only way to know): expected wait (the queue ahead of it drained at `max_inflight` per measured
  service time) + its own service time (the caller's best achievable latency, e.g. the
  degrade policy's fastest mode, else the measured estimate) > deadline. The estimate is a
  fluid approximation, not a bound: it refuses the hopeless, it does not promise the rest.
- fair share: with no free slot and another client waiting, a client already holding (in
  flight + queued) its share of capacity, `(max_inflight + max_queue) // clients holding`,
  may only swap a less urgent queued step of its own for the new one; else it is refused.
  A lone client may use all of the capacity: the share binds only when others wait.
- queue full: a queued step of a lower priority is displaced (BEST_EFFORT first, then
  NORMAL; within a priority, the one of the client holding most, newest first), else a
  same-priority step of another client over its share; else the newcomer is refused.
- SAFETY is never shed while it can still be served in time: it is exempt from the fair
  share and from the queue bound (it displaces what it can and otherwise queues beyond it),
  so its only refusal is the deadline one, which the caller's `best_latency_s` makes mean
  "no path can serve it in time". Its overflow is still bounded: each SAFETY step queued
  pushes the next one's expected start later, until the deadline check refuses.

A displaced ticket learns it at once (`Ticket.wait` returns, `Ticket.shed` says why) so its
caller can answer RESOURCE_EXHAUSTED. Every shed carries a reason and a retry-after hint: the
time to drain the current queue. Plain threading, one lock; the caller passes `now`
(monotonic seconds, the clock of the deadlines) so tests need no sleeps.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum, StrEnum

from fallback.priority import Priority


class ShedReason(StrEnum):
    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    FAIR_SHARE = "fair_share"
    PRIORITY = "priority"  # displaced from the queue by a more urgent step


@dataclass(frozen=True)
class Shed:
    reason: ShedReason
    priority: Priority
    retry_after_s: float  # hint for the client: the current queue's drain time
    detail: str


@dataclass(frozen=True)
class AdmissionConfig:
    max_inflight: int = 8  # steps served at once
    max_queue: int = 32  # steps waiting for a slot (SAFETY may exceed it, see module docstring)
    initial_service_s: float = 0.02  # service-time estimate until the first measurement
    service_ewma_alpha: float = 0.2  # weight of each new measurement in the estimate

    def __post_init__(self) -> None:
        if self.max_inflight < 1 or self.max_queue < 0:
            raise ValueError("max_inflight must be >= 1 and max_queue >= 0")
        if not self.initial_service_s > 0:
            raise ValueError(f"initial_service_s must be > 0, got {self.initial_service_s}")
        if not 0 < self.service_ewma_alpha <= 1:
            raise ValueError(f"service_ewma_alpha must be in (0, 1], got {self.service_ewma_alpha}")


@dataclass(frozen=True)
class Load:
    inflight: int
    queued: int
    service_estimate_s: float


class TicketState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SHED = "shed"  # displaced while queued; see Ticket.shed
    RELEASED = "released"


class Ticket:
    """One admitted step. Release it exactly when done, whatever happened (try/finally)."""

    def __init__(
        self, controller: AdmissionController, priority: Priority, client_id: str, order: int
    ) -> None:
        self.priority = priority
        self.client_id = client_id
        self.order = order  # admission order: lower is older
        self._controller = controller
        self._state = TicketState.QUEUED
        self._shed: Shed | None = None
        self._settled = threading.Event()  # set when it leaves the queue

    @property
    def state(self) -> TicketState:
        return self._state

    @property
    def shed(self) -> Shed | None:
        """Why the ticket was displaced from the queue, if it was."""
        return self._shed

    def wait(self, timeout_s: float | None) -> bool:
        """Block until the step may run (True), or was shed or timed out (False)."""
        self._settled.wait(timeout_s)
        return self._state is TicketState.RUNNING

    def release(self, service_s: float | None = None) -> None:
        """Free the slot (or leave the queue); `service_s`, if measured, updates the estimate.

        Idempotent. Pass no `service_s` for a step that did not run to completion: a
        failure's duration says nothing about how long serving takes.
        """
        self._controller._release(self, service_s)

    def _settle(self, state: TicketState, shed: Shed | None = None) -> None:
        self._state = state
        self._shed = shed
        self._settled.set()


class AdmissionController:
    """Thread-safe; one per coordinator."""

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._service_s = config.initial_service_s
        self._inflight = 0
        # one FIFO per priority, most urgent first: iteration order is service order
        self._queues: dict[Priority, deque[Ticket]] = {p: deque() for p in sorted(Priority)}
        self._held: Counter[str] = Counter()  # tickets in flight or queued, by client
        self._shed_counts: Counter[tuple[ShedReason, Priority]] = Counter()

    def admit(
        self,
        priority: Priority,
        client_id: str,
        deadline: float,
        now: float,
        *,
        best_latency_s: float | None = None,
    ) -> Ticket | Shed:
        """A running or queued ticket, or why not (see the module docstring for the rules)."""
        with self._lock:
            own_s = self._service_s if best_latency_s is None else best_latency_s
            if self._inflight < self.config.max_inflight:  # then the queue is empty
                # No contention: the estimate (which a transient, e.g. a slow store, can
                # inflate) is no reason to refuse; the degrade policy picks a mode that fits.
                if now >= deadline:
                    return self._shed(ShedReason.DEADLINE, priority, "deadline already passed")
                return self._start(self._ticket(priority, client_id))
            over_share = priority is not Priority.SAFETY and self._over_share(client_id)
            full = self._queued() >= self.config.max_queue
            victim = self._victim(priority, client_id, over_share) if over_share or full else None
            if victim is None and over_share:
                return self._shed(ShedReason.FAIR_SHARE, priority, f"client {client_id}")
            if victim is None and full and priority is not Priority.SAFETY:
                return self._shed(ShedReason.QUEUE_FULL, priority, f"{self._queued()} queued")
            ahead = self._ahead(priority) - int(victim is not None and victim.priority == priority)
            wait_s = (ahead + 1) * self._service_s / self.config.max_inflight
            if now + wait_s + own_s > deadline:
                detail = f"expected wait {wait_s:.3f} s + {own_s:.3f} s"
                return self._shed(ShedReason.DEADLINE, priority, detail)
            if victim is not None:
                self._displace(victim, priority)
            ticket = self._ticket(priority, client_id)
            self._queues[priority].append(ticket)
            return ticket

    def load(self) -> Load:
        with self._lock:
            return Load(self._inflight, self._queued(), self._service_s)

    def shed_counts(self) -> dict[tuple[ShedReason, Priority], int]:
        """Sheds so far by reason and priority (displaced tickets included), for metrics."""
        with self._lock:
            return dict(self._shed_counts)

    def _release(self, ticket: Ticket, service_s: float | None) -> None:
        valid = service_s is None or (math.isfinite(service_s) and service_s >= 0)
        self._free(ticket, service_s if valid else None)
        if not valid:  # after freeing: a bad measurement must not leak the slot
            raise ValueError(f"service_s must be a finite number >= 0, got {service_s!r}")

    def _free(self, ticket: Ticket, service_s: float | None) -> None:
        with self._lock:
            if ticket.state is TicketState.QUEUED:
                self._queues[ticket.priority].remove(ticket)
            elif ticket.state is TicketState.RUNNING:
                self._inflight -= 1
                if service_s is not None:
                    alpha = self.config.service_ewma_alpha
                    self._service_s = (1 - alpha) * self._service_s + alpha * service_s
                self._start_next()
            else:  # shed or already released: nothing held
                return
            self._drop_hold(ticket.client_id)
            ticket._settle(TicketState.RELEASED)

    def _ticket(self, priority: Priority, client_id: str) -> Ticket:
        self._held[client_id] += 1
        return Ticket(self, priority, client_id, next(self._order))

    def _start(self, ticket: Ticket) -> Ticket:
        self._inflight += 1
        ticket._settle(TicketState.RUNNING)
        return ticket

    def _start_next(self) -> None:
        for queue in self._queues.values():  # most urgent first
            if queue:
                self._start(queue.popleft())
                return

    def _queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _ahead(self, priority: Priority) -> int:
        return sum(len(q) for p, q in self._queues.items() if p <= priority)

    def _share(self, client_id: str) -> int:
        clients = len(self._held.keys() | {client_id})
        return max(1, (self.config.max_inflight + self.config.max_queue) // clients)

    def _over_share(self, client_id: str) -> bool:
        others_waiting = any(t.client_id != client_id for q in self._queues.values() for t in q)
        return others_waiting and self._held[client_id] >= self._share(client_id)

    def _victim(self, priority: Priority, client_id: str, over_share: bool) -> Ticket | None:
        """The queued ticket a newcomer may displace to make room, if any.

        A less urgent one first (a client over its share may only give up its own); else a
        same-priority one of another client over its share. One SAFETY step never displaces
        another.
        """
        lower = [
            t
            for p, queue in self._queues.items()
            if p > priority
            for t in queue
            if not over_share or t.client_id == client_id
        ]
        if lower:  # least urgent, of the client that would hold most, newest
            return max(lower, key=lambda t: (t.priority, self._held_after(t, client_id), t.order))
        if over_share or priority is Priority.SAFETY:
            return None
        share = self._share(client_id)
        over = [
            t
            for t in self._queues[priority]
            if t.client_id != client_id and self._held[t.client_id] > share
        ]
        return max(over, key=lambda t: (self._held[t.client_id], t.order), default=None)

    def _held_after(self, ticket: Ticket, newcomer: str) -> int:
        """What `ticket`'s client would hold if the newcomer's step were admitted."""
        return self._held[ticket.client_id] + (ticket.client_id == newcomer)

    def _displace(self, victim: Ticket, by: Priority) -> None:
        self._queues[victim.priority].remove(victim)
        self._drop_hold(victim.client_id)
        reason = ShedReason.PRIORITY if by < victim.priority else ShedReason.FAIR_SHARE
        shed = self._shed(reason, victim.priority, f"displaced by a {by.name} step")
        victim._settle(TicketState.SHED, shed)

    def _shed(self, reason: ShedReason, priority: Priority, detail: str) -> Shed:
        self._shed_counts[reason, priority] += 1
        retry_after_s = (self._queued() + 1) * self._service_s / self.config.max_inflight
        return Shed(reason, priority, retry_after_s, detail)

    def _drop_hold(self, client_id: str) -> None:
        self._held[client_id] -= 1
        if self._held[client_id] == 0:
            del self._held[client_id]
