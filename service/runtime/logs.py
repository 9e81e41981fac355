"""Process logging, set up in one place: text for a person at a terminal, one JSON object per
line for a log collector.

An event's fields (session, seq, stage, replica, mode, latency_ms) are passed as
`extra=fields(...)` and become JSON keys (text: `key=value` after the message); the current
trace and span ids are added when a span is recording. A session id is a credential: only its
first characters are ever written (`state.session.short_id`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from state.session import short_id

# The event fields a log line may carry, in the order text lines show them.
EVENT_FIELDS = ("session", "seq", "stage", "replica", "mode", "latency_ms", "trace_id", "span_id")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
