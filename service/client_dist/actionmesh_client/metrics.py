"""The client's counters: Prometheus counters when prometheus_client is installed (the server's
processes and most robot stacks have it), plain in-process counts otherwise, so that the thin
client depends on grpcio, protobuf and numpy only."""

from __future__ import annotations

import threading
from collections import Counter as _Counts
from typing import Any, Protocol


class LabelledCounter(Protocol):
    def inc(self, label: str = "") -> None: ...


class _PlainCounter:
    def __init__(self) -> None:
        self._counts: _Counts[str] = _Counts()
        self._lock = threading.Lock()

    def inc(self, label: str = "") -> None:
        with self._lock:
            self._counts[label] += 1

    def value(self, label: str = "") -> int:
        with self._lock:
            return self._counts[label]


class _PrometheusCounter:
    def __init__(self, name: str, documentation: str, label: str | None) -> None:
        import prometheus_client

        self._label = label
        names = [label] if label else []
        self._counter: Any = prometheus_client.Counter(name, documentation, names)

    def inc(self, label: str = "") -> None:
        (self._counter.labels(label) if self._label else self._counter).inc()


def counter(name: str, documentation: str, label: str | None = None) -> LabelledCounter:
    """A counter with at most one label, counted with `inc(label)`."""
    try:
        return _PrometheusCounter(name, documentation, label)
    except ImportError:
        return _PlainCounter()
