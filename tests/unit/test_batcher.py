"""DynamicBatcher: lone steps go at once, steps that queue up share a batch, errors reach all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, wait

import pytest

from service.coordinator.batcher import Batched, DynamicBatcher

pytestmark = pytest.mark.timeout(30)

RESULT_TIMEOUT_S = 10.0  # a generous bound on anything that should happen "at once"
LONG_WAIT_S = 5.0  # max_wait_s where a test must show the batcher did not wait for it


class Recorder:
    """A run_batch that records its batches and can hold the first one until released."""

    def __init__(self, hold_first: bool = False, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.first_entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[str]:
        with self._lock:
            self.batches.append(list(items))
            first = len(self.batches) == 1
        if first:
            self.first_entered.set()
            assert self.release.wait(RESULT_TIMEOUT_S), "test never released the first batch"
        if self.fail_on in items:
            raise RuntimeError(f"batch {items} failed")
        return [f"result-{item}" for item in items]

    def wait_first_entered(self) -> None:
        assert self.first_entered.wait(RESULT_TIMEOUT_S), "first batch never started"


@pytest.fixture
def batchers() -> Iterator[list[DynamicBatcher[int, str]]]:
    """Batchers made by a test, closed at its end even if it fails."""
    made: list[DynamicBatcher[int, str]] = []
    yield made
    for batcher in made:
        batcher.close()


def make(
    batchers: list[DynamicBatcher[int, str]],
    run_batch: Recorder,
    max_size: int = 16,
    max_wait_s: float = LONG_WAIT_S,
    workers: int = 2,
) -> DynamicBatcher[int, str]:
    batcher = DynamicBatcher(run_batch, max_size=max_size, max_wait_s=max_wait_s, workers=workers)
    batchers.append(batcher)
    return batcher


def in_thread(batcher: DynamicBatcher[int, str], item: int) -> Future[Batched[str]]:
    """Submits from a thread of its own, as each robot's step does in the coordinator: a lone
    item runs in the thread that submits it, so a held first batch would block the test."""
    outer: Future[Batched[str]] = Future()

    def submit() -> None:
        inner = batcher.submit(item)
        try:
            outer.set_result(inner.result(timeout=RESULT_TIMEOUT_S))
        except Exception as exc:
            outer.set_exception(exc)

    threading.Thread(target=submit, daemon=True).start()
    return outer


def results(futures: list[Future[Batched[str]]]) -> list[Batched[str]]:
    return [f.result(timeout=RESULT_TIMEOUT_S) for f in futures]


@pytest.mark.parametrize("workers", [1, 2])
def test_lone_item_is_dispatched_without_waiting(
    batchers: list[DynamicBatcher[int, str]], workers: int
) -> None:
    batcher = make(batchers, Recorder(), max_wait_s=LONG_WAIT_S, workers=workers)
    for item in range(3):  # each alone, one after another
        started = time.monotonic()
        got = batcher.submit(item).result(timeout=LONG_WAIT_S)
        elapsed = time.monotonic() - started
        assert got.value == f"result-{item}"
        assert got.batch_size == 1
        assert elapsed < LONG_WAIT_S / 2, f"a lone item waited {elapsed:.2f}s for company"


def test_a_lone_item_runs_in_the_submitting_thread_and_one_behind_a_batch_does_not(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    """No thread switch for a step that has no one to batch with; batching is kept for the
    rest (an item that arrives while a batch is in flight queues for a worker)."""
    ran_in: dict[int, threading.Thread] = {}
    recorder = Recorder(hold_first=True)

    def run_batch(items: list[int]) -> list[str]:
        ran_in.update((item, threading.current_thread()) for item in items)
        return recorder(items)

    batcher = DynamicBatcher(run_batch, max_size=4, max_wait_s=0.01, workers=2)
    batchers.append(batcher)
    first = in_thread(batcher, 0)
    recorder.wait_first_entered()
    behind = batcher.submit(1)
    recorder.release.set()
    assert behind.result(timeout=RESULT_TIMEOUT_S).value == "result-1"
    first.result(timeout=RESULT_TIMEOUT_S)
    assert ran_in[1] is not threading.current_thread(), "queued behind a batch: a worker ran it"
    assert batcher.submit(2).result(timeout=0).value == "result-2", "alone: already done"
    assert ran_in[2] is threading.current_thread()


def test_items_queued_during_a_batch_go_together_in_the_next(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, max_size=16, workers=1)
    first = in_thread(batcher, 0)
    recorder.wait_first_entered()
    queued = [batcher.submit(item) for item in range(1, 6)]
    recorder.release.set()

    assert first.result(timeout=RESULT_TIMEOUT_S).batch_size == 1
    assert [r.batch_size for r in results(queued)] == [5] * 5
    assert recorder.batches == [[0], [1, 2, 3, 4, 5]]


def test_while_a_batch_is_in_flight_a_free_worker_waits_to_fill_its_batch(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, max_size=4, max_wait_s=LONG_WAIT_S, workers=2)
    first = in_thread(batcher, 0)
    recorder.wait_first_entered()

    # The second worker is free and takes item 1 at once; because batch [0] is in flight, it
    # waits (up to max_wait_s) for more rather than sending [1] alone, and sends at max_size.
    later = [batcher.submit(item) for item in range(1, 5)]
    got = results(later)  # batch [0] is still held: the second batch went without it
    assert not first.done()
    assert [r.batch_size for r in got] == [4] * 4
    assert recorder.batches[1] == [1, 2, 3, 4]

    recorder.release.set()
    assert first.result(timeout=RESULT_TIMEOUT_S).batch_size == 1


def test_batches_never_exceed_max_size(batchers: list[DynamicBatcher[int, str]]) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, max_size=4, workers=1)
    futures = [in_thread(batcher, 0)]
    recorder.wait_first_entered()
    futures += [batcher.submit(item) for item in range(1, 11)]
    recorder.release.set()

    got = results(futures)
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [r.batch_size for r in got] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2]


def test_many_concurrent_submitters_get_their_own_results(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder()
    batcher = make(batchers, recorder, max_size=5, max_wait_s=0.001, workers=3)
    futures: dict[int, Future[Batched[str]]] = {}
    lock = threading.Lock()

    def submit_range(start: int) -> None:
        for item in range(start, start + 50):
            future = batcher.submit(item)
            with lock:
                futures[item] = future

    threads = [threading.Thread(target=submit_range, args=(s,)) for s in range(0, 200, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RESULT_TIMEOUT_S)

    for item, future in futures.items():
        got = future.result(timeout=RESULT_TIMEOUT_S)
        assert got.value == f"result-{item}"
        assert 1 <= got.batch_size <= 5
        assert got.queue_s >= 0
    assert len(futures) == 200
    assert all(1 <= len(b) <= 5 for b in recorder.batches)
    assert sorted(i for b in recorder.batches for i in b) == list(range(200))  # each once


def test_results_go_to_the_right_futures_in_order(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, max_size=16, workers=1)
    futures = [in_thread(batcher, 100)]
    recorder.wait_first_entered()
    items = [7, 3, 9, 1, 8]
    futures += [batcher.submit(item) for item in items]
    recorder.release.set()

    assert [r.value for r in results(futures)] == [f"result-{i}" for i in [100, *items]]
    assert recorder.batches[1] == items  # the batch keeps arrival order


def test_queue_time_counts_the_wait_behind_a_busy_worker(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, workers=1)
    in_thread(batcher, 0)
    recorder.wait_first_entered()
    submitted = time.perf_counter()
    queued = batcher.submit(1)
    recorder.release.set()
    got = queued.result(timeout=RESULT_TIMEOUT_S)
    assert 0 <= got.queue_s <= time.perf_counter() - submitted


def test_exception_reaches_every_future_of_its_batch_and_the_batcher_keeps_working(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True, fail_on=-1)
    batcher = make(batchers, recorder, max_size=16, workers=1)
    first = in_thread(batcher, 0)
    recorder.wait_first_entered()
    doomed = [batcher.submit(item) for item in (1, -1, 2)]
    recorder.release.set()

    assert first.result(timeout=RESULT_TIMEOUT_S).value == "result-0"
    errors = [f.exception(timeout=RESULT_TIMEOUT_S) for f in doomed]
    assert all(isinstance(e, RuntimeError) for e in errors), errors
    assert "failed" in str(errors[0])
    assert recorder.batches[1] == [1, -1, 2]

    after = batcher.submit(3).result(timeout=RESULT_TIMEOUT_S)
    assert after.value == "result-3"
    assert after.batch_size == 1


def test_every_worker_survives_failing_batches(batchers: list[DynamicBatcher[int, str]]) -> None:
    recorder = Recorder(fail_on=-1)
    batcher = make(batchers, recorder, workers=2)
    for _ in range(4):  # more failures than workers
        assert isinstance(batcher.submit(-1).exception(timeout=RESULT_TIMEOUT_S), RuntimeError)
    assert [r.value for r in results([batcher.submit(i) for i in range(4)])] == [
        f"result-{i}" for i in range(4)
    ]


def test_cancelled_items_are_left_out_of_the_batch(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    recorder = Recorder(hold_first=True)
    batcher = make(batchers, recorder, workers=1)
    in_thread(batcher, 0)
    recorder.wait_first_entered()
    keep, drop, keep_too = batcher.submit(1), batcher.submit(2), batcher.submit(3)
    assert drop.cancel()
    recorder.release.set()

    assert [r.batch_size for r in results([keep, keep_too])] == [2, 2]
    assert recorder.batches[1] == [1, 3]
    with pytest.raises(CancelledError):
        drop.result(timeout=0)


def test_close_finishes_queued_items_and_stops_the_workers() -> None:
    before = set(threading.enumerate())
    recorder = Recorder(hold_first=True)
    batcher = DynamicBatcher(recorder, max_size=2, max_wait_s=LONG_WAIT_S, workers=3)
    workers = set(threading.enumerate()) - before
    assert len(workers) == 3

    futures = [in_thread(batcher, 0)]
    recorder.wait_first_entered()
    futures += [batcher.submit(item) for item in range(1, 6)]
    recorder.release.set()
    batcher.close()

    _, not_done = wait(futures[1:], timeout=0)
    assert not not_done, "items submitted before close() were dropped"
    futures[0].result(timeout=RESULT_TIMEOUT_S)  # the first ran in its submitter's thread
    assert [f.result().value for f in futures] == [f"result-{i}" for i in range(6)]
    assert not any(thread.is_alive() for thread in workers)


def test_close_of_an_idle_batcher_is_prompt() -> None:
    before = set(threading.enumerate())
    batcher = DynamicBatcher(Recorder(), max_size=4, max_wait_s=LONG_WAIT_S, workers=2)
    workers = set(threading.enumerate()) - before
    started = time.monotonic()
    batcher.close()
    assert time.monotonic() - started < LONG_WAIT_S / 2
    assert not any(thread.is_alive() for thread in workers)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_wrong_result_count_fails_the_batch_instead_of_hanging(
    batchers: list[DynamicBatcher[int, str]],
) -> None:
    def short(items: list[int]) -> list[str]:
        return [str(i) for i in items[:-1]]

    batcher = DynamicBatcher(short, max_size=4, max_wait_s=LONG_WAIT_S, workers=1)
    batchers.append(batcher)
    assert batcher.submit(1).exception(timeout=2.0) is not None
