"""Dynamic batching: steps of different sessions that arrive together share one call per stage."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.runtime import metrics

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Batched(Generic[R]):
    """A result with how it was batched, for the reply's timing fields."""

    value: R
    queue_s: float
    batch_size: int


class DynamicBatcher(Generic[T, R]):
    """Collects up to max_size items into one batch.

    A worker takes what is already queued; it waits (at most max_wait_s) for more only while
    another batch is in flight, since then the pipeline is busy anyway and waiting costs
    nothing. At most `workers` batches run at once, so that while stage k works on one batch
    stage k+1 can work on another. A step submitted while nothing is queued and the pipeline
    has room runs at once in the submitting thread: on the robot's critical path, two thread
    switches fewer (each one a wait for a core on a busy machine).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R | Exception]],
        max_size: int,
        max_wait_s: float,
        workers: int,
    ) -> None:
        self._run_batch, self._max_size, self._max_wait_s = run_batch, max_size, max_wait_s
        self._queue: queue.SimpleQueue[_Pending[T, Batched[R]] | None] = queue.SimpleQueue()
        self._in_flight = 0
        self._slots = threading.BoundedSemaphore(workers)  # batches that may run at once
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> Future[Batched[R]]:
        if self._closed:
            raise RuntimeError("batcher is closed")
        pending: _Pending[T, Batched[R]] = _Pending(item)
        if self._idle() and self._slots.acquire(blocking=False):
            self._run([pending])
            return pending.future
        self._queue.put(pending)
        return pending.future

    def _idle(self) -> bool:
        """Nothing queued and nothing in flight: a step would have no one to batch with."""
        with self._lock:
            return not self._in_flight and self._queue.empty()

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _collect(self, first: _Pending[T, Batched[R]]) -> list[_Pending[T, Batched[R]]]:
        batch, until = [first], time.perf_counter() + self._max_wait_s
        while len(batch) < self._max_size:
            with self._lock:
                wait_s = max(0.0, until - time.perf_counter()) if self._in_flight else 0.0
            try:
                nxt = self._queue.get(timeout=wait_s) if wait_s else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: let another worker see the sentinel after this batch
                self._queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _work(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._collect(first)
            self._slots.acquire()
            self._run(batch)

    def _run(self, batch: list[_Pending[T, Batched[R]]]) -> None:
        """Runs one batch in this thread and releases its slot."""
        try:
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if batch:
                self._deliver(batch)
        finally:
            self._slots.release()

    def _deliver(self, batch: list[_Pending[T, Batched[R]]]) -> None:
        started = time.perf_counter()
        metrics.BATCH_SIZE.observe(len(batch))
        with self._lock:
            self._in_flight += 1
        try:
            results = self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
        except Exception as exc:  # delivered to every waiting step, which maps it
            for p in batch:
                p.future.set_exception(exc)
            return
        finally:
            with self._lock:
                self._in_flight -= 1
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):  # this item failed, the others did not
                p.future.set_exception(result)
            else:
                p.future.set_result(Batched(result, started - p.enqueued, len(batch)))
