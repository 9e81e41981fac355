"""Log lines: JSON (one object per line, the event's fields as keys) or text (key=value after
the message); a session id is never written whole, however it is passed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from service.runtime import logs
from state.session import SHORT_ID_CHARS

SESSION = "3f2a9c0e5b7d4e1fa8c6b2d9e0f1a2b3c4d5e6f7"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def emit(log_format: str, stream: io.StringIO) -> str:
    logs.configure("INFO", log_format, stream)
    logging.getLogger("actionmesh.test").info(
        "step answered for %s",
        "robot-1",
        extra=logs.fields(
            session=SESSION, seq=7, stage=2, replica="stage-2-r0", mode="FULL", latency_ms=12.34567
        ),
    )
    logging.getLogger("actionmesh.test").warning("raw", extra={"session": SESSION})
    return stream.getvalue()


def test_json_is_one_event_per_line_with_its_fields(restore_root: None) -> None:
    lines = emit("json", io.StringIO()).splitlines()
    assert len(lines) == 2
    event, raw = (json.loads(line) for line in lines)
    assert event["msg"] == "step answered for robot-1"
    assert (event["level"], event["logger"]) == ("INFO", "actionmesh.test")
    assert {k: event[k] for k in ("seq", "stage", "replica", "mode", "latency_ms")} == {
        "seq": 7,
        "stage": 2,
        "replica": "stage-2-r0",
        "mode": "FULL",
        "latency_ms": 12.346,
    }
    assert event["session"] == raw["session"] == SESSION[:SHORT_ID_CHARS]
    assert event["ts"].endswith("+00:00")


def test_text_puts_the_fields_after_the_message(restore_root: None) -> None:
    text = emit("text", io.StringIO())
    first = text.splitlines()[0]
    assert first.endswith(
        f"step answered for robot-1 session={SESSION[:8]} seq=7 stage=2 replica=stage-2-r0 "
        "mode=FULL latency_ms=12.346"
    )


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_session_id_is_never_written_whole(restore_root: None, log_format: str) -> None:
    assert SESSION not in emit(log_format, io.StringIO())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere(restore_root: None) -> None:
    assert not emit("auto", Terminal()).startswith("{")
    assert all(line.startswith("{") for line in emit("auto", io.StringIO()).splitlines())


def test_the_trace_id_comes_from_the_current_span(
    restore_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "trace_ids", lambda: ("a" * 32, "b" * 16))
    event = json.loads(emit("json", io.StringIO()).splitlines()[0])
    assert (event["trace_id"], event["span_id"]) == ("a" * 32, "b" * 16)
