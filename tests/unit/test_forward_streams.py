"""The stream transport's parts without a socket: the watchdog cancels only what is overdue,
and a replica gets at most MAX_STREAMS streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from service.coordinator.routing.forward_streams import (
    MAX_STREAMS,
    ForwardStream,
    StreamPool,
    _Watchdog,
)
from service.proto import stage_pb2

WAIT_S = 2.0  # generous: the watchdog wakes at a call's deadline


def test_the_watchdog_cancels_an_overdue_call_and_leaves_a_timely_one() -> None:
    watchdog = _Watchdog()
    overdue, timely = threading.Event(), threading.Event()
    with watchdog.guard(overdue.set, 0.01) as late:
        assert overdue.wait(WAIT_S), "cancelled once its time ran out"
    assert late.fired
    with watchdog.guard(timely.set, 60.0) as fine:
        time.sleep(0.05)
    assert not fine.fired and not timely.is_set()


class Rendezvous:
    def __init__(self, requests: Iterator[object]) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Stub:
    def __init__(self) -> None:
        self.opened: list[Rendezvous] = []

    def ForwardStream(self, requests: Iterator[object]) -> Rendezvous:  # noqa: N802
        self.opened.append(Rendezvous(requests))
        return self.opened[-1]


def test_a_replica_gets_at_most_max_streams_and_idle_ones_are_reused() -> None:
    stub = Stub()
    pool = StreamPool(stub)
    taken = [pool.take() for _ in range(MAX_STREAMS)]
    assert all(s is not None for s in taken) and len(stub.opened) == MAX_STREAMS
    assert pool.take() is None, "all busy: the caller goes unary"
    first = taken[0]
    assert first is not None
    pool.give_back(first)
    assert pool.take() is first and len(stub.opened) == MAX_STREAMS
    pool.discard(first)
    assert stub.opened[0].cancelled
    assert pool.take() is not None and len(stub.opened) == MAX_STREAMS + 1


class LateReplies:
    """A reply that comes just as the watchdog cancels the stream."""

    def __init__(self, requests: Iterator[object]) -> None:
        self.cancelled = False

    def __next__(self) -> str:
        time.sleep(0.3)
        return "reply"

    def cancel(self) -> None:
        self.cancelled = True


class LateStub:
    def ForwardStream(self, requests: Iterator[object]) -> LateReplies:  # noqa: N802
        self.replies = LateReplies(requests)
        return self.replies


def test_a_stream_cancelled_as_its_reply_came_is_marked_not_to_be_reused() -> None:
    stub = LateStub()
    stream = ForwardStream(stub)
    assert stream.exchange(stage_pb2.ForwardRequest(), 0.01) == "reply"
    assert stub.replies.cancelled and stream.cancelled
