"""Redis durability against real redis-server and sentinel processes on loopback: the AOF across
a kill -9, a Sentinel failover under load, WAIT for replicas (the sentinel URL's parsing:
tests/unit/test_redis_urls.py)."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from service.local.embedded_redis import EmbeddedRedis
from service.local.embedded_sentinel import EmbeddedSentinels
from state.redis_store import (
    RETRY_ATTEMPTS,
    SENTINEL_RETRY,
    RedisSessionStore,
    RetryPolicy,
)
from state.session import (
    CommitStatus,
    SessionId,
    SessionRecord,
    StageIndex,
    StageState,
    StepCommit,
)
from state.store import NotReplicated, StoreUnavailable

pytestmark = pytest.mark.timeout(60)

SOCKET_TIMEOUT_S = 1.0
WAIT_TIMEOUT_S = 0.3
TTL_S = 60.0
N_STAGES = 3
CONTROL_PERIOD_S = 0.005  # each simulated robot steps at up to 200 Hz
POLL_S = 0.02
STEPS_BEFORE_KILL = 20
STEPS_AFTER_SWITCH = 5
SWITCH_DEADLINE_S = 30.0  # generous: a failover here takes a few seconds
JOIN_TIMEOUT_S = SENTINEL_RETRY.budget_s + 5.0  # a step is bounded by the retry budget
SHORT_RETRY = RetryPolicy(attempts=3, budget_s=1.0)


def stages_at(seq: int) -> dict[StageIndex, StageState]:
    return {
        StageIndex(k): StageState(seq, seq.to_bytes(4, "big") + bytes([k, 0, 255]))
        for k in range(N_STAGES)
    }


def reply_at(seq: int) -> bytes:
    return b"reply-%d" % seq


def step_to(seq: int, wait_replicas: int = 0) -> StepCommit:
    return StepCommit(
        seq - 1,
        seq,
        stages_at(seq),
        reply_at(seq),
        TTL_S,
        N_STAGES,
        wait_replicas=wait_replicas,
        wait_timeout_s=WAIT_TIMEOUT_S,
    )


def new_session(store: RedisSessionStore, wait_replicas: int = 0) -> SessionId:
    sid = SessionId(secrets.token_hex(8))
    store.create(
        SessionRecord(sid, 0, "v1", TTL_S, "robot", stages_at(0), wait_replicas=wait_replicas)
    )
    return sid


def assert_holds_a_step(store: RedisSessionStore, sid: SessionId, lowest: int, highest: int) -> int:
    """The session is at a seq in [lowest, highest] with exactly that step's data; its seq."""
    record = store.load(sid)
    assert record is not None, f"session={sid} is gone"
    assert lowest <= record.seq <= highest, (
        f"session={sid} at seq {record.seq}, not in [{lowest}, {highest}]"
    )
    assert record.stage_states == stages_at(record.seq)
    assert record.last_reply == reply_at(record.seq)
    return record.seq


def retries(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("actionmesh_state_retries_total", labels) or 0.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> float:
    """Poll until condition holds; the time it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s}s: {what}"
        time.sleep(POLL_S)
    return time.monotonic() - started


@dataclass
class Robot:
    """Steps one session as a coordinator would commit it: a failed step is retried with the same
    seq; a CONFLICT at that very seq means an earlier try landed, and it counts as acknowledged
    only once confirm_replicated says so (the coordinator's stored-reply path)."""

    store: RedisSessionStore
    sid: SessionId
    wait_replicas: int = 0
    acked: int = 0  # the highest seq acknowledged to the robot
    attempted: int = 0  # the highest seq ever sent
    events: list[tuple[float, int, str]] = field(default_factory=list)  # (end time, seq, outcome)
    violations: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.violations:
            self.step()
            stop.wait(CONTROL_PERIOD_S)

    def step(self) -> None:
        seq = self.acked + 1
        self.attempted = max(self.attempted, seq)
        started = time.monotonic()
        try:
            kind = self._try(seq)
        except NotReplicated:
            kind = "not_replicated"
        except StoreUnavailable:
            kind = "unavailable"
        now = time.monotonic()
        self.slowest_s = max(self.slowest_s, now - started)
        self.events.append((now, seq, kind))

    def _try(self, seq: int) -> str:
        outcome = self.store.commit(self.sid, step_to(seq, self.wait_replicas))
        if outcome.status is CommitStatus.CONFLICT and outcome.current_seq == seq:
            self.store.confirm_replicated(self.sid, self.wait_replicas, WAIT_TIMEOUT_S)
            self.acked = seq
            return "acked_stored"  # the stored reply, once replicated
        if outcome.status is not CommitStatus.COMMITTED:
            self.violations.append(f"session={self.sid} seq={seq}: {outcome}")
            return "violation"
        self.acked = seq
        return "acked"


@contextmanager
def running(robots: list[Robot]) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=robot.run, args=(stop,), daemon=True) for robot in robots]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=JOIN_TIMEOUT_S)
        assert not any(thread.is_alive() for thread in threads), "a robot is stuck in a step"


# --- AOF -----------------------------------------------------------------------------------


def test_aof_always_keeps_every_committed_step_across_kill_9(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    store = RedisSessionStore(server.url, socket_timeout_s=SOCKET_TIMEOUT_S)
    try:
        robots = [Robot(store, new_session(store)) for _ in range(3)]
        with running(robots):
            wait_until(lambda: all(r.acked >= STEPS_BEFORE_KILL for r in robots), "steps", 20.0)
            server.kill()  # mid-stream: the robots are still committing
        assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0
        server.restart()
        for robot in robots:
            assert not robot.violations
            # A commit in flight at the kill may have landed without its answer: acked + 1.
            seq = assert_holds_a_step(store, robot.sid, robot.acked, robot.attempted)
            outcome = store.commit(robot.sid, step_to(seq + 1))
            assert outcome.status is CommitStatus.COMMITTED, "the store works after the restart"
        print(f"\nAOF: {sum(r.acked for r in robots)} acknowledged steps all survived kill -9")
    finally:
        store.close()
        server.stop()


def test_default_embedded_redis_keeps_nothing_on_disk(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        store = RedisSessionStore(server.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = new_session(store)
        server.kill()
        server.restart()
        assert store.load(sid) is None
        store.close()
    assert not (tmp_path / "appendonly.aof").exists()


# --- Sentinel failover ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry", [None, SHORT_RETRY], ids=["sentinel-retry-budget", "short-retry-budget"]
)
def test_sentinel_failover_loses_no_replicated_step(
    tmp_path: Path, retry: RetryPolicy | None
) -> None:
    """A primary, its replica and three sentinels; robots commit with wait_replicas=1; kill -9
    the primary. A standby replicates from the replica (chained, so the sentinels see one
    candidate and WAIT 1 on the primary is met by the replica alone): once the replica is
    promoted the standby is its replica, and WAIT 1 can be met again.

    With the Sentinel retry budget the store rides through the switch; with a short one steps
    fail during it and the robots retry them, which takes the stored-reply path."""
    primary = EmbeddedRedis(tmp_path / "primary")
    replica = EmbeddedRedis(tmp_path / "replica", replica_of=primary)
    with (
        primary,
        replica,
        EmbeddedRedis(tmp_path / "standby", replica_of=replica),
        EmbeddedSentinels(3, tmp_path / "sentinels", primary.port) as sentinels,
    ):
        sentinels.wait_converged(replicas=1, timeout_s=15.0)
        store = RedisSessionStore(sentinels.url, socket_timeout_s=SOCKET_TIMEOUT_S, retry=retry)
        robots = [Robot(store, new_session(store, 1), wait_replicas=1) for _ in range(4)]
        retries_before = retries("commit") + retries("confirm_replicated")
        with running(robots):
            wait_until(lambda: all(r.acked >= STEPS_BEFORE_KILL for r in robots), "steps", 20.0)
            acked_at_kill = [robot.acked for robot in robots]
            killed_at = time.monotonic()
            primary.kill()
            wait_until(
                lambda: sentinels.primary_address() == ("127.0.0.1", replica.port),
                "the replica promoted",
                SWITCH_DEADLINE_S,
            )
            promoted_s = time.monotonic() - killed_at
            wait_until(
                lambda: all(
                    r.acked >= before + STEPS_AFTER_SWITCH
                    for r, before in zip(robots, acked_at_kill, strict=True)
                ),
                "every robot acknowledged again after the switch",
                SWITCH_DEADLINE_S,
            )
        outcomes = Counter(kind for r in robots for t, _, kind in r.events if t > killed_at)
        # A step at least two past the last acknowledged before the kill was answered by the new
        # primary (the one after it may have been in flight, answered by the old one).
        on_new = [
            [(t - killed_at, kind) for t, seq, kind in r.events if seq >= before + 2]
            for r, before in zip(robots, acked_at_kill, strict=True)
        ]
        landed = min(t for events in on_new for t, kind in events if kind != "unavailable")
        resumed = max(min(t for t, kind in events if kind.startswith("acked")) for events in on_new)
        print(
            f"\nSentinel switch: replica promoted {promoted_s:.2f}s after kill -9, first commit "
            f"on it {landed:.2f}s, every robot acknowledged again {resumed:.2f}s; failed commits "
            f"during the switch: {outcomes['unavailable']} StoreUnavailable + "
            f"{outcomes['not_replicated']} NotReplicated; steps answered from the stored reply "
            f"{outcomes['acked_stored']}; slowest step "
            f"{max(r.slowest_s for r in robots):.2f}s; acknowledged steps "
            f"{sum(r.acked for r in robots)}"
        )
        assert outcomes["violation"] == 0, [v for r in robots for v in r.violations]
        assert retries("commit") + retries("confirm_replicated") > retries_before
        new_primary = RedisSessionStore(replica.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        for robot in robots:
            assert_holds_a_step(new_primary, robot.sid, robot.acked, robot.attempted)
        new_primary.close()
        store.close()


# --- WAIT ----------------------------------------------------------------------------------


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "primary") as server:
        yield server


def test_wait_without_a_replica_raises_not_replicated(primary: EmbeddedRedis) -> None:
    store = RedisSessionStore(primary.url, socket_timeout_s=SOCKET_TIMEOUT_S)
    sid = new_session(store, wait_replicas=1)
    started = time.monotonic()
    with pytest.raises(
        NotReplicated, match="seq=1 is committed on the primary but acknowledged by 0 of 1"
    ):
        store.commit(sid, step_to(1, wait_replicas=1))
    assert WAIT_TIMEOUT_S * 0.9 <= time.monotonic() - started < WAIT_TIMEOUT_S + 0.5
    loaded = store.load(sid)
    assert loaded is not None and (loaded.seq, loaded.wait_replicas) == (1, 1)
    # The retry of that step finds it stored; its answer waits for confirm_replicated.
    outcome = store.commit(sid, step_to(1, wait_replicas=1))
    assert (outcome.status, outcome.current_seq) == (CommitStatus.CONFLICT, 1)
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="acknowledged by 0 of 1"):
        store.confirm_replicated(sid, 1, WAIT_TIMEOUT_S)
    assert WAIT_TIMEOUT_S * 0.9 <= time.monotonic() - started < WAIT_TIMEOUT_S + 0.5
    store.close()


def test_wait_with_a_replica_acknowledges(primary: EmbeddedRedis, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "replica", replica_of=primary) as replica:
        store = RedisSessionStore(primary.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = new_session(store, wait_replicas=1)
        started = time.monotonic()
        assert store.commit(sid, step_to(1, wait_replicas=1)).status is CommitStatus.COMMITTED
        store.confirm_replicated(sid, 1, WAIT_TIMEOUT_S)
        assert time.monotonic() - started < WAIT_TIMEOUT_S
        with redis.Redis.from_url(replica.url) as raw:  # acknowledged: the replica has it now
            assert raw.hget(f"am:{{{sid}}}:session", "seq") == b"1"
        with pytest.raises(NotReplicated, match="acknowledged by 1 of 2"):
            store.commit(sid, step_to(2, wait_replicas=2))
        store.close()


def test_wait_timeout_must_leave_the_socket_time(primary: EmbeddedRedis) -> None:
    store = RedisSessionStore(primary.url, socket_timeout_s=SOCKET_TIMEOUT_S)
    sid = new_session(store)
    for wait_replicas, timeout_s in ((1, SOCKET_TIMEOUT_S * 0.8), (1, 0.0), (-1, 0.1)):
        commit = StepCommit(
            0, 1, {}, b"r", TTL_S, N_STAGES, wait_replicas=wait_replicas, wait_timeout_s=timeout_s
        )
        with pytest.raises(ValueError, match="wait_"):
            store.commit(sid, commit)
    with pytest.raises(ValueError, match=r"socket_timeout_s=1\.0"):
        store.confirm_replicated(sid, 1, SOCKET_TIMEOUT_S)
    store.confirm_replicated(sid, 0, 0.0)  # nothing asked, nothing waited for
    store.close()


def test_writes_to_a_replica_are_retried_then_unavailable(
    primary: EmbeddedRedis, tmp_path: Path
) -> None:
    """A write refused as READONLY (a demoted primary) is transient: retried, counted, then
    StoreUnavailable; create is not retried. Redis 6.2 reports it from Lua as a script error."""
    with EmbeddedRedis(tmp_path / "replica", replica_of=primary) as replica:
        writer = RedisSessionStore(primary.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        sid = new_session(writer)
        writer.confirm_replicated(sid, 1, WAIT_TIMEOUT_S)  # the replica has the session
        store = RedisSessionStore(replica.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        assert store.load(sid) is not None  # reads are fine
        commit_retries, create_retries = retries("commit"), retries("create")
        with pytest.raises(StoreUnavailable, match="read-only replica"):
            store.commit(sid, step_to(1))
        assert retries("commit") - commit_retries == RETRY_ATTEMPTS - 1
        with pytest.raises(StoreUnavailable, match="operation=create: no answer after 1 attempt"):
            new_session(store)
        assert retries("create") == create_retries
        # A commit that writes nothing (CONFLICT) still meets the replica at its WAIT.
        with pytest.raises(StoreUnavailable, match="read-only replica"):
            store.commit(sid, step_to(5, wait_replicas=1))
        with pytest.raises(StoreUnavailable, match="read-only replica"):
            store.confirm_replicated(sid, 1, WAIT_TIMEOUT_S)
        store.close()
        writer.close()


# --- sentinel URL --------------------------------------------------------------------------
