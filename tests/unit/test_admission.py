"""Admission control: deterministic, `now` passed explicitly, no sleeps.

The overload test is a small discrete-event simulation: steps arrive at 3x what the slots
can serve, each takes exactly `SERVICE_S`, and a queued step whose deadline passes is given
up by its caller, as the coordinator would.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from fallback.admission import (
    AdmissionConfig,
    AdmissionController,
    Shed,
    ShedReason,
    Ticket,
    TicketState,
)
from fallback.priority import Priority

SAFETY, NORMAL, BEST_EFFORT = Priority.SAFETY, Priority.NORMAL, Priority.BEST_EFFORT
SERVICE_S = 0.01
FAR = 60.0  # a deadline nothing misses


def controller(max_inflight: int = 2, max_queue: int = 4) -> AdmissionController:
    return AdmissionController(
        AdmissionConfig(max_inflight, max_queue, initial_service_s=SERVICE_S)
    )


def ticket(outcome: Ticket | Shed) -> Ticket:
    assert isinstance(outcome, Ticket), outcome
    return outcome


def shed(outcome: Ticket | Shed) -> Shed:
    assert isinstance(outcome, Shed), outcome
    return outcome


def displaced(t: Ticket) -> ShedReason | None:
    """Why a queued ticket was shed, if it was."""
    return t.shed.reason if t.shed is not None else None


def test_free_slots_run_at_once_then_the_queue_starts_on_release() -> None:
    ac = controller(max_inflight=2)
    first, second = (ticket(ac.admit(NORMAL, f"r{i}", FAR, now=0.0)) for i in range(2))
    third = ticket(ac.admit(NORMAL, "r2", FAR, now=0.0))
    assert (first.state, second.state, third.state) == (
        TicketState.RUNNING,
        TicketState.RUNNING,
        TicketState.QUEUED,
    )
    assert not third.wait(timeout_s=0)
    first.release(SERVICE_S)
    assert third.wait(timeout_s=0)
    assert ac.load().inflight == 2 and ac.load().queued == 0


def test_the_queue_serves_the_most_urgent_first_fifo_within_a_priority() -> None:
    ac = controller(max_inflight=1, max_queue=8)
    running = ticket(ac.admit(NORMAL, "r0", FAR, now=0.0))
    order = [BEST_EFFORT, NORMAL, SAFETY, NORMAL, SAFETY]
    queued = [ticket(ac.admit(p, f"r{i + 1}", FAR, now=0.0)) for i, p in enumerate(order)]
    started = []
    current = running
    for _ in queued:
        current.release(SERVICE_S)
        current = next(t for t in queued if t.state is TicketState.RUNNING)
        started.append(queued.index(current))
    assert started == [2, 4, 1, 3, 0]


def test_hopeless_steps_are_refused_at_admission() -> None:
    ac = controller(max_inflight=1, max_queue=8)
    # a free slot is refused only once the deadline has passed: the estimate alone (which a
    # transient can inflate) is no reason to refuse work that has no one to wait for
    refused = shed(ac.admit(NORMAL, "r0", deadline=1.0, now=1.0))
    assert refused.reason is ShedReason.DEADLINE and refused.retry_after_s > 0
    ticket(ac.admit(NORMAL, "r0", deadline=1.005, now=1.0))
    for i in range(3):
        ticket(ac.admit(NORMAL, f"r{i + 1}", FAR, now=1.0))
    # 3 queued ahead on 1 slot: starts after ~4 x 10 ms, done after ~50 ms
    assert shed(ac.admit(NORMAL, "r4", deadline=1.045, now=1.0)).reason is ShedReason.DEADLINE
    ticket(ac.admit(NORMAL, "r4", deadline=1.055, now=1.0))
    # SAFETY goes ahead of the queued NORMAL steps, so it fits where they would not
    ticket(ac.admit(SAFETY, "r5", deadline=1.025, now=1.0))
    assert ac.shed_counts() == {(ShedReason.DEADLINE, NORMAL): 2}


def test_best_latency_admits_what_a_faster_degraded_path_can_serve() -> None:
    ac = controller(max_inflight=1)
    ticket(ac.admit(NORMAL, "r0", FAR, now=0.0))
    assert shed(ac.admit(SAFETY, "r1", deadline=0.015, now=0.0)).reason is ShedReason.DEADLINE
    # the student answers in 2 ms: after the ~10 ms wait for the slot, it still fits
    ticket(ac.admit(SAFETY, "r1", deadline=0.015, now=0.0, best_latency_s=0.002))


def test_measured_service_times_move_the_estimate() -> None:
    ac = AdmissionController(AdmissionConfig(1, 4, initial_service_s=0.01, service_ewma_alpha=0.5))
    ticket(ac.admit(NORMAL, "r0", FAR, now=0.0)).release(0.03)
    assert ac.load().service_estimate_s == pytest.approx(0.02)
    ticket(ac.admit(NORMAL, "r0", FAR, now=0.0)).release()  # not measured: no change
    assert ac.load().service_estimate_s == pytest.approx(0.02)
    # now a step needs 20 ms: behind a running one (wait 20 ms + its own 20 ms), 35 ms left
    # is refused and 45 ms is not
    ticket(ac.admit(NORMAL, "r0", FAR, now=0.0))
    assert shed(ac.admit(NORMAL, "r1", deadline=0.035, now=0.0)).reason is ShedReason.DEADLINE
    ticket(ac.admit(NORMAL, "r1", deadline=0.045, now=0.0))


def test_the_queue_is_bounded_and_the_hint_is_its_drain_time() -> None:
    ac = controller(max_inflight=1, max_queue=2)
    for i in range(3):
        ticket(ac.admit(NORMAL, f"r{i}", FAR, now=0.0))
    full = shed(ac.admit(NORMAL, "r3", FAR, now=0.0))
    assert full.reason is ShedReason.QUEUE_FULL
    assert full.retry_after_s == pytest.approx(3 * SERVICE_S)  # 2 queued + 1, on 1 slot
    assert ac.load().queued == 2
    assert ac.shed_counts() == {(ShedReason.QUEUE_FULL, NORMAL): 1}


def test_a_full_queue_sheds_best_effort_first_and_the_displaced_learn_it() -> None:
    ac = controller(max_inflight=1, max_queue=3)
    ticket(ac.admit(NORMAL, "r0", FAR, now=0.0))
    normal = ticket(ac.admit(NORMAL, "r1", FAR, now=0.0))
    best_effort = [ticket(ac.admit(BEST_EFFORT, f"r{i + 2}", FAR, now=0.0)) for i in range(2)]
    ticket(ac.admit(NORMAL, "r4", FAR, now=0.0))
    ticket(ac.admit(SAFETY, "r5", FAR, now=0.0))
    for t in best_effort:  # newest first, then the other
        assert not t.wait(timeout_s=0)
        assert t.state is TicketState.SHED and t.shed is not None
        assert t.shed.reason is ShedReason.PRIORITY and t.shed.retry_after_s > 0
        t.release()  # harmless: a shed ticket holds nothing
    assert normal.state is TicketState.QUEUED
    # only NORMAL left below SAFETY: it goes next, the newest one
    ticket(ac.admit(SAFETY, "r6", FAR, now=0.0))
    assert normal.state is TicketState.QUEUED
    assert ac.load().queued == 3
    # BEST_EFFORT cannot displace anything
    assert shed(ac.admit(BEST_EFFORT, "r7", FAR, now=0.0)).reason is ShedReason.QUEUE_FULL
    assert ac.shed_counts() == {
        (ShedReason.PRIORITY, BEST_EFFORT): 2,
        (ShedReason.PRIORITY, NORMAL): 1,
        (ShedReason.QUEUE_FULL, BEST_EFFORT): 1,
    }


def test_safety_queues_beyond_the_bound_until_its_deadline_refuses_it() -> None:
    ac = controller(max_inflight=1, max_queue=2)
    ticket(ac.admit(SAFETY, "r0", FAR, now=0.0))
    for i in range(4):  # two beyond the bound
        ticket(ac.admit(SAFETY, f"r{i + 1}", deadline=1.0, now=0.0))
    assert ac.load().queued == 4
    # 4 SAFETY ahead: starts after ~50 ms; 40 ms left is not servable by any path
    assert shed(ac.admit(SAFETY, "r5", deadline=0.04, now=0.0)).reason is ShedReason.DEADLINE
    assert shed(ac.admit(NORMAL, "r6", FAR, now=0.0)).reason is ShedReason.QUEUE_FULL


def test_fair_share_between_two_clients() -> None:
    ac = controller(max_inflight=2, max_queue=4)  # capacity 6: a share of 3 each for two
    greedy = [ticket(ac.admit(NORMAL, "a", FAR, now=0.0)) for _ in range(6)]  # alone: all of it
    # b arrives: the queue is full, a holds more than its share: a's newest queued step goes
    for i in range(3):
        ticket(ac.admit(NORMAL, "b", FAR, now=0.0))
        assert displaced(greedy[-1 - i]) is ShedReason.FAIR_SHARE
    # now each holds its share: neither adds more while the other waits
    assert shed(ac.admit(NORMAL, "b", FAR, now=0.0)).reason is ShedReason.FAIR_SHARE
    assert shed(ac.admit(NORMAL, "a", FAR, now=0.0)).reason is ShedReason.FAIR_SHARE
    held = Counter(t.client_id for t in greedy if t.state is not TicketState.SHED)
    assert held == {"a": 3}
    # SAFETY is exempt from the share; the full queue makes room from a's own NORMAL step
    ticket(ac.admit(SAFETY, "a", FAR, now=0.0))
    assert displaced(greedy[2]) is ShedReason.PRIORITY
    assert ac.shed_counts() == {
        (ShedReason.FAIR_SHARE, NORMAL): 5,
        (ShedReason.PRIORITY, NORMAL): 1,
    }


def test_fair_share_refuses_before_the_queue_is_full() -> None:
    ac = controller(max_inflight=2, max_queue=6)  # capacity 8: 4 each for two
    for _ in range(3):
        ticket(ac.admit(NORMAL, "a", FAR, now=0.0))
    own_best_effort = ticket(ac.admit(BEST_EFFORT, "a", FAR, now=0.0))
    ticket(ac.admit(NORMAL, "b", FAR, now=0.0))  # b waits
    # at its share, a may swap a less urgent step of its own for a more urgent one ...
    swapped_in = ticket(ac.admit(NORMAL, "a", FAR, now=0.0))
    assert displaced(own_best_effort) is ShedReason.PRIORITY
    assert swapped_in.state is TicketState.QUEUED
    # ... but not add one: room is left, for b
    assert shed(ac.admit(NORMAL, "a", FAR, now=0.0)).reason is ShedReason.FAIR_SHARE
    assert ac.load().queued == 3


def test_release_is_idempotent_and_frees_a_queued_ticket() -> None:
    ac = controller(max_inflight=1)
    running = ticket(ac.admit(NORMAL, "r0", FAR, now=0.0))
    queued = ticket(ac.admit(NORMAL, "r1", FAR, now=0.0))
    queued.release()  # its caller gave up (its deadline passed)
    queued.release()
    assert queued.state is TicketState.RELEASED and not queued.wait(timeout_s=0)
    running.release(SERVICE_S)
    running.release(SERVICE_S)
    assert ac.load().inflight == 0 and ac.load().queued == 0
    with pytest.raises(ValueError, match="service_s"):
        ticket(ac.admit(NORMAL, "r0", FAR, now=0.0)).release(float("nan"))
    assert ac.load().inflight == 0  # released all the same
    assert ac.load().service_estimate_s == SERVICE_S


@pytest.mark.parametrize(
    "kwargs",
    [{"max_inflight": 0}, {"max_queue": -1}, {"initial_service_s": 0}, {"service_ewma_alpha": 0}],
)
def test_bad_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdmissionConfig(**kwargs)  # type: ignore[arg-type]


@dataclass
class Overload:
    arrived: Counter[Priority] = field(default_factory=Counter)
    served: Counter[Priority] = field(default_factory=Counter)
    shed: Counter[Priority] = field(default_factory=Counter)
    gave_up: Counter[Priority] = field(default_factory=Counter)  # deadline passed in the queue
    late: Counter[Priority] = field(default_factory=Counter)  # served after its deadline
    sheds: list[Shed] = field(default_factory=list)
    max_queued: int = 0


# Per 10 arrivals: 1 SAFETY, 3 NORMAL, 6 BEST_EFFORT (from 4 robots in turn).
MIX = [SAFETY, NORMAL, BEST_EFFORT, BEST_EFFORT, NORMAL, BEST_EFFORT, BEST_EFFORT, NORMAL]
MIX += [BEST_EFFORT, BEST_EFFORT]


def simulate_overload(ac: AdmissionController, load_factor: float, n: int) -> Overload:
    """Arrivals at `load_factor` x capacity; each step takes SERVICE_S; callers give up at deadline."""
    slots = ac.config.max_inflight
    gap_s = SERVICE_S / slots / load_factor
    out = Overload()
    events: list[tuple[float, int, str, Ticket]] = []  # (time, tie-break, kind, ticket)
    order = itertools.count()
    pending: dict[Ticket, float] = {}  # admitted, not yet started or shed: deadlines

    def settle(now: float) -> None:
        for t, deadline in list(pending.items()):
            if t.state is TicketState.RUNNING:
                del pending[t]
                heapq.heappush(events, (now + SERVICE_S, next(order), "done", t))
                out.late[t.priority] += now + SERVICE_S > deadline
            elif t.state is TicketState.SHED:
                del pending[t]
                assert t.shed is not None
                out.sheds.append(t.shed)
                out.shed[t.priority] += 1

    def run_until(now: float) -> None:
        while events and events[0][0] <= now:
            at, _, kind, t = heapq.heappop(events)
            if kind == "done":
                out.served[t.priority] += 1
                t.release(SERVICE_S)
            elif t.state is TicketState.QUEUED:  # "deadline": its caller gives up
                out.gave_up[t.priority] += 1
                del pending[t]
                t.release()
            settle(at)

    for i in range(n):
        now = i * gap_s
        run_until(now)
        priority = MIX[i % len(MIX)]
        out.arrived[priority] += 1
        deadline = now + (0.015 if i % 7 == 0 else 0.1)  # some steps need an answer fast
        outcome = ac.admit(priority, f"robot{i % 4}", deadline, now)
        if isinstance(outcome, Shed):
            out.sheds.append(outcome)
            out.shed[priority] += 1
            continue
        pending[outcome] = deadline
        if outcome.state is TicketState.QUEUED:
            heapq.heappush(events, (deadline, next(order), "deadline", outcome))
        settle(now)
        out.max_queued = max(out.max_queued, ac.load().queued)
    run_until(float("inf"))
    return out


def test_overload_sheds_best_effort_first_and_never_safety() -> None:
    ac = controller(max_inflight=4, max_queue=8)
    out = simulate_overload(ac, load_factor=3.0, n=3000)

    assert out.served.total() + out.shed.total() + out.gave_up.total() == 3000
    assert out.shed[SAFETY] == 0 and out.gave_up[SAFETY] == 0
    assert out.served[SAFETY] == out.arrived[SAFETY]

    def shed_rate(p: Priority) -> float:
        return (out.shed[p] + out.gave_up[p]) / out.arrived[p]

    assert shed_rate(BEST_EFFORT) > shed_rate(NORMAL) > shed_rate(SAFETY) == 0
    assert shed_rate(BEST_EFFORT) > 0.9  # a third of the arrivals fit; they go to the urgent
    # the slots were kept busy: about everything they could serve was served
    assert out.served.total() > 0.9 * 3000 / 3.0
    assert all(s.retry_after_s > 0 for s in out.sheds)
    assert out.max_queued <= ac.config.max_queue
    # refused at admission rather than timed out later: few steps give up in the queue
    reasons = Counter(s.reason for s in out.sheds)
    assert reasons[ShedReason.DEADLINE] > 0
    assert out.gave_up.total() < reasons[ShedReason.DEADLINE]
    # the wait estimate is a mean, not a bound: a few admitted steps finish late
    assert out.late.total() < 0.05 * out.served.total()
    # the counters saw every shed, displaced ones included
    counted = Counter[Priority]()
    for (_, priority), count in ac.shed_counts().items():
        counted[priority] += count
    assert counted == out.shed
    assert ac.load().inflight == 0 and ac.load().queued == 0


def test_concurrent_callers_leave_no_capacity_behind() -> None:
    ac = controller(max_inflight=2, max_queue=3)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def robot(name: str) -> None:
        for i in range(100):
            outcome = ac.admit(Priority(1 + i % 3), name, time.monotonic() + FAR, time.monotonic())
            if isinstance(outcome, Shed):
                result = "shed"
            elif outcome.wait(timeout_s=FAR):
                outcome.release(SERVICE_S)
                result = "served"
            else:
                outcome.release()
                result = "displaced"
            with lock:
                outcomes[result] += 1

    threads = [threading.Thread(target=robot, args=(f"robot{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=FAR)
    assert not any(t.is_alive() for t in threads)
    assert outcomes.total() == 400 and outcomes["served"] > 0
    assert ac.load().inflight == 0 and ac.load().queued == 0
