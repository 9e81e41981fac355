"""Process logging, set up in one place: text for a person at a terminal, one JSON object per
line for a log collector.

An event's fields (session, seq, stage, replica, mode, latency_ms) are passed as
`extra=fields(...)` and become JSON keys (text: `key=value` after the message); the current
trace and span ids are added when a span is recording. A session id is a credential: only its
first characters are ever written (`state.session.short_id`).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from state.session import short_id

# The event fields a log line may carry, in the order text lines show them.
EVENT_FIELDS = ("session", "seq", "stage", "replica", "mode", "latency_ms", "trace_id", "span_id")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Lines a serving process holds while its log sink is slow (write_in_background); more are
# dropped and counted. About 3 MB of lines: minutes of a stalled sink at the usual rate.
QUEUED_LINES = 10_000
# How long an exiting process waits for its queued lines to be written.
DRAIN_S = 2.0


def no_trace() -> tuple[str, str] | None:
    return None


# Set by service.runtime.tracing when tracing is on: the current span's (trace_id, span_id).
trace_ids: Callable[[], tuple[str, str] | None] = no_trace


def fields(
    *,
    session: str | None = None,
    seq: int | None = None,
    stage: int | None = None,
    replica: str | None = None,
    mode: str | None = None,
    latency_ms: float | None = None,
) -> dict[str, object]:
    """An event's fields for `log.info(..., extra=fields(...))`; the session is shortened."""
    given: dict[str, object | None] = {
        "session": None if session is None else short_id(session),
        "seq": seq,
        "stage": stage,
        "replica": replica,
        "mode": mode,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
    }
    return {k: v for k, v in given.items() if v is not None}


def _event_fields(record: logging.LogRecord) -> dict[str, Any]:
    found = {name: getattr(record, name) for name in EVENT_FIELDS if hasattr(record, name)}
    if "session" in found:  # never whole, whoever passed it
        found["session"] = short_id(str(found["session"]))
    if "trace_id" not in found:
        ids = trace_ids()
        if ids is not None:
            found["trace_id"], found["span_id"] = ids
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, msg, the event fields,
    and exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_event_fields(record),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    """The usual one-line text, then the event fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        extra = " ".join(f"{k}={v}" for k, v in _event_fields(record).items())
        return f"{line} {extra}" if extra else line


def configure(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """Send every logger's records at `level` and above to `stream` (stderr) in `log_format`:
    json, text, or auto (json unless the stream is a terminal). Replaces earlier handlers."""
    out = sys.stderr if stream is None else stream
    if log_format == "auto":
        log_format = "text" if out.isatty() else "json"
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Formats in the logging thread (the trace ids are that thread's) and never waits: a
    line the queue has no room for is dropped and counted."""

    def __init__(self, lines: queue.Queue[logging.LogRecord | None], dropped: Callable[[], None]):
        super().__init__(lines)
        self._dropped = dropped

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._dropped()


class BackgroundWrites:
    """`logger`'s one handler, moved behind a bounded queue and written by a thread of its
    own, so that a slow or stalled sink (a busy disk, a log pipe nobody reads) never holds
    the thread that logs. A line beyond `capacity` is dropped and `dropped` is called."""

    def __init__(
        self, logger: logging.Logger, dropped: Callable[[], None], capacity: int = QUEUED_LINES
    ) -> None:
        (out,) = logger.handlers
        self._logger, self._out = logger, out
        self._lines: queue.Queue[logging.LogRecord | None] = queue.Queue(capacity)
        self._front = _DroppingQueueHandler(self._lines, dropped)
        self._front.setFormatter(out.formatter)
        self._own_format = out.formatter
        out.setFormatter(logging.Formatter("%(message)s"))  # the line comes formatted
        # A daemon: a writer stuck on a stalled sink does not by itself keep the process.
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()
        logger.removeHandler(out)
        logger.addHandler(self._front)

    def _write(self) -> None:
        while (record := self._lines.get()) is not None:
            self._out.handle(record)

    def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Writes what is queued within timeout_s; True once written, and later lines are
        then written directly again. False: the sink is stalled, and it must not be flushed
        (that would wait for the stuck write)."""
        if not self._writer.is_alive():
            return True
        deadline = time.monotonic() + timeout_s
        try:
            self._lines.put(None, timeout=timeout_s)
        except queue.Full:
            return False
        self._writer.join(max(0.0, deadline - time.monotonic()))
        if self._writer.is_alive():
            return False
        # Later lines go to the sink directly again. Under its lock (other threads' lines wait
        # for the restored format): the lines queued between the end mark and the swap first.
        self._out.acquire()
        try:
            self._logger.removeHandler(self._front)
            self._logger.addHandler(self._out)
            while not self._lines.empty():
                if (record := self._lines.get_nowait()) is not None:
                    self._out.handle(record)
            self._out.setFormatter(self._own_format)
        finally:
            self._out.release()
        return True


_background: BackgroundWrites | None = None


def write_in_background(dropped: Callable[[], None]) -> None:
    """For a serving process: the root logger's lines are written in the background (see
    BackgroundWrites); what is still queued is written at exit (`drain`), lost only to a
    kill or to a sink still stalled then."""
    global _background
    if _background is None:
        _background = BackgroundWrites(logging.getLogger(), dropped)
        atexit.register(drain)


def drain() -> bool:
    """Writes the lines write_in_background still holds, for at most DRAIN_S; False if the
    sink is stalled (see BackgroundWrites.drain)."""
    return _background is None or _background.drain()
