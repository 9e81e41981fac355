"""logs.BackgroundWrites: a serving process's log lines go through a bounded queue to a writer
thread, so a stalled sink never holds the thread that logs; lines beyond the queue are
dropped and counted, the rest written in order once the sink moves again."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

from service.runtime import logs


class StalledStream(io.StringIO):
    """A sink that takes nothing until `moving` is set (a log pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.moving, self.entered = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.moving.wait(10)
        return super().write(text)


def logger_on(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate, logger.level = False, logging.INFO
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger.handlers[:] = [handler]
    return logger


def test_a_stalled_sink_costs_the_logging_thread_nothing_and_drops_only_the_overflow() -> None:
    sink = StalledStream()
    logger = logger_on(sink, "actionmesh.test.stalled")
    dropped: list[int] = []
    background = logs.BackgroundWrites(logger, lambda: dropped.append(1), capacity=10)
    try:
        started = time.monotonic()
        logger.warning("degraded step %d", 0, extra=logs.fields(seq=0))
        assert sink.entered.wait(5), "the writer never tried to write"
        for i in range(1, 100):
            logger.warning("degraded step %d", i, extra=logs.fields(seq=i))
        took_s = time.monotonic() - started
        assert took_s < 5, f"logging waited {took_s:.1f} s for a stalled sink"
        # The writer is stuck writing line 0, the queue holds 1-10: the other 89 were dropped.
        assert len(dropped) == 89
        # Draining a stalled sink gives up in time and says so (exit_now then does not flush).
        started = time.monotonic()
        assert background.drain(timeout_s=0.2) is False
        assert time.monotonic() - started < 2
    finally:
        sink.moving.set()
    assert background.drain(timeout_s=5)
    written = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [w["msg"] for w in written] == [f"degraded step {i}" for i in range(11)]
    assert [w["seq"] for w in written] == list(range(11))  # formatted in the logging thread


def test_drain_writes_what_is_queued_then_later_lines_go_straight_to_the_sink() -> None:
    sink = io.StringIO()
    logger = logger_on(sink, "actionmesh.test.drained")
    background = logs.BackgroundWrites(logger, lambda: None)
    try:
        raise ValueError("bad weights")
    except ValueError:
        logger.exception("load failed")
    logger.info("still serving")
    assert background.drain()
    logger.info("stopping", extra=logs.fields(seq=3))  # after the drain: written at once
    written = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [w["msg"] for w in written] == ["load failed", "still serving", "stopping"]
    assert "ValueError: bad weights" in written[0]["exc"]
    assert written[2]["seq"] == 3  # in the sink's own format again
