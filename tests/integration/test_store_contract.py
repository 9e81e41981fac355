"""The session store contract, run against every backend: the in-memory store (what the
coordinator's in-process tests use), RedisSessionStore on a real redis-server, on a real
3-primary Redis Cluster (`redis+cluster://`: every script must touch one slot, or the Cluster
refuses it), and on a real redis-server that serves mutual TLS only (`rediss://`). Whatever
one does, the others must do too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.local.dev_certs import write_dev_certs
from service.local.embedded_redis import EmbeddedRedis
from service.local.embedded_redis_cluster import EmbeddedRedisCluster
from service.runtime.tls import TlsFiles
from state.memory_store import MemorySessionStore
from state.redis_store import RedisSessionStore
from state.redis_url import RedisCredentials
from state.session import (
    Anchor,
    CommitStatus,
    SessionRecord,
    StageIndex,
    StageState,
    StepCommit,
    SwitchProgress,
    committed,
)
from state.store import NotReplicated, SessionStore
from tests.support.session_records import fresh_record, logged, new_id, stages_at, step
from tests.support.tls_redis import TlsRedis

pytestmark = pytest.mark.timeout(30)

EXPIRY_DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"), primaries=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    write_dev_certs(folder, ("redis", "coordinator"))
    return folder


@pytest.fixture(scope="module")
def tls_redis_server(
    tmp_path_factory: pytest.TempPathFactory, tls_folder: Path
) -> Iterator[TlsRedis]:
    with TlsRedis(
        tmp_path_factory.mktemp("redis-tls"), TlsFiles.of_role(tls_folder, "redis")
    ) as server:
        yield server


@pytest.fixture(params=["memory", "redis", "cluster", "redis-tls"])
def store(request: pytest.FixtureRequest) -> Iterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    credentials = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    else:  # over TLS, presenting the coordinator's certificate (tls_dir set)
        url = request.getfixturevalue("tls_redis_server").url
        files = TlsFiles.of_role(request.getfixturevalue("tls_folder"), "coordinator")
        credentials = RedisCredentials(None, files.ca, files.cert, files.key)
    redis_store = RedisSessionStore(url, socket_timeout_s=1.0, credentials=credentials)
    yield redis_store
    redis_store.close()


def test_create_load_round_trip(store: SessionStore) -> None:
    sid = new_id()
    record = SessionRecord(
        sid, 0, "v1", 10.0, "robot-7", stage_states=stages_at(0), last_reply=b"\x00r\xff"
    )
    store.create(record)
    assert store.load(sid) == record
    assert store.load(new_id()) is None


def test_create_twice_fails(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    with pytest.raises(ValueError, match=sid[:8]):  # logs show ids shortened
        store.create(fresh_record(sid, ttl_s=99.0))
    loaded = store.load(sid)
    assert loaded is not None and loaded.ttl_s == 10.0


def test_commit_with_expected_seq(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    outcome = store.commit(sid, step(0, 1, stages_at(1), b"reply-1", 10.0))
    assert (outcome.status, outcome.current_seq) == (CommitStatus.COMMITTED, 1)
    loaded = store.load(sid)
    assert loaded is not None
    assert (loaded.seq, loaded.stage_states, loaded.last_reply) == (1, stages_at(1), b"reply-1")
    assert (loaded.model_version, loaded.client_id) == ("v1", "robot-7")


def test_commit_of_some_stages_keeps_the_others(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    store.commit(sid, step(0, 1, {StageIndex(2): StageState(1, b"s2")}, b"early-exit", 10.0))
    loaded = store.load(sid)
    assert loaded is not None
    assert loaded.stage_states[StageIndex(0)] == StageState(0, b"")
    assert loaded.stage_states[StageIndex(2)] == StageState(1, b"s2")


def test_stale_commit_conflicts_and_changes_nothing(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid, ttl_s=5.0))
    store.commit(sid, step(0, 1, stages_at(1), b"reply-1", 5.0))
    store.commit(sid, step(1, 2, stages_at(2), b"reply-2", 5.0))
    before = store.load(sid)
    outcome = store.commit(sid, step(0, 1, stages_at(7), b"stale", 60.0))
    assert (outcome.status, outcome.current_seq) == (CommitStatus.CONFLICT, 2)
    assert store.load(sid) == before
    ttl_left = store.ttl_left_s(sid)
    assert ttl_left is not None and ttl_left <= 5.0  # the TTL was not refreshed either


def test_retried_commit_sees_its_own_seq(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    assert store.commit(sid, step(0, 1, stages_at(1), b"r1", 10.0)).status is CommitStatus.COMMITTED
    after_first = store.load(sid)
    outcome = store.commit(sid, step(0, 1, stages_at(1), b"r1", 10.0))
    assert (outcome.status, outcome.current_seq) == (CommitStatus.CONFLICT, 1)
    assert store.load(sid) == after_first


def test_expired_session_is_gone(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid, ttl_s=0.3))
    deadline = time.monotonic() + EXPIRY_DEADLINE_S
    while store.load(sid) is not None:
        assert time.monotonic() < deadline, f"session={sid} outlived its 0.3 s TTL"
        time.sleep(0.02)
    outcome = store.commit(sid, step(0, 1, stages_at(1), b"r1", 10.0))
    assert (outcome.status, outcome.current_seq) == (CommitStatus.GONE, None)
    assert store.ttl_left_s(sid) is None
    assert store.load(sid) is None  # the failed commit did not resurrect it


def test_delete(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    assert store.delete(sid) is True
    assert store.load(sid) is None
    assert store.delete(sid) is False


def test_observation_log_keeps_the_last_n(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    logged(store, sid, steps=10, limit=4)
    assert store.log_depth(sid) == 4
    assert store.observations(sid, 7, 10) == [b"obs7", b"obs8", b"obs9", b"obs10"]
    assert store.observations(sid, 9, 9) == [b"obs9"]
    assert store.observations(sid, 6, 10) is None, "seq 6 was trimmed away"
    assert store.observations(sid, 10, 11) is None, "seq 11 was never logged"


def test_anchor_is_set_when_a_stage_starts_lagging_and_dropped_once_level(
    store: SessionStore,
) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    logged(store, sid, steps=3, limit=8)
    level = store.load(sid)
    assert level is not None and level.anchor is None
    early = {k: v for k, v in stages_at(4).items() if k != 2}  # stage 2 is down
    store.commit(sid, StepCommit(3, 4, early, b"r4", 10.0, 3, b"obs4", 8))
    store.commit(
        sid,
        StepCommit(
            4, 5, {k: v for k, v in stages_at(5).items() if k != 2}, b"r5", 10.0, 3, b"obs5", 8
        ),
    )
    lagging = store.load(sid)
    assert lagging is not None
    assert lagging.anchor == Anchor(3, {k: s.data for k, s in stages_at(3).items()})
    assert [lagging.stage_states[StageIndex(k)].seq for k in range(3)] == [5, 5, 3]
    store.commit(sid, StepCommit(5, 6, stages_at(6), b"r6", 10.0, 3, b"obs6", 8))
    caught_up = store.load(sid)
    assert caught_up is not None and caught_up.anchor is None
    assert [caught_up.stage_states[StageIndex(k)].seq for k in range(3)] == [6, 6, 6]


def test_anchor_of_a_fresh_session_has_no_states(store: SessionStore) -> None:
    sid = new_id()
    store.create(SessionRecord(sid, 0, "v1", 10.0))
    store.commit(sid, StepCommit(0, 1, {StageIndex(0): StageState(1, b"s0")}, b"r1", 10.0, 3))
    record = store.load(sid)
    assert record is not None and record.anchor == Anchor(0, {})


def test_replay_progress_moves_the_anchor_and_the_student_state_is_kept(
    store: SessionStore,
) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    logged(store, sid, steps=3, limit=8)
    early = {k: v for k, v in stages_at(4).items() if k != 2}
    store.commit(sid, StepCommit(3, 4, early, b"r4", 10.0, 3, b"obs4", 8))
    progress = Anchor(4, {StageIndex(k): b"replayed-%d" % k for k in range(3)})
    student = StageState(5, b"gru")
    store.commit(
        sid, StepCommit(4, 5, {}, b"r5", 10.0, 3, b"obs5", 8, student=student, anchor=progress)
    )
    record = store.load(sid)
    assert record is not None
    assert record.anchor == progress and record.student == student
    assert [record.stage_states[StageIndex(k)].seq for k in range(3)] == [4, 4, 3]
    store.commit(sid, StepCommit(5, 6, stages_at(6), b"r6", 10.0, 3, b"obs6", 8, anchor=progress))
    level = store.load(sid)
    assert level is not None and level.anchor is None, "a level commit ignores replay progress"


def test_switch_progress_is_kept_until_a_commit_moves_the_version(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    logged(store, sid, steps=2, limit=8)
    progress = SwitchProgress("v2", 1, {StageIndex(0): b"\x00new0", StageIndex(2): b""}, exact=True)
    store.commit(sid, StepCommit(2, 3, stages_at(3), b"r3", 10.0, 3, b"obs3", 8, switch=progress))
    record = store.load(sid)
    assert record is not None and record.switch == progress and record.model_version == "v1"
    store.commit(sid, StepCommit(3, 4, stages_at(4), b"r4", 10.0, 3, b"obs4", 8))
    kept = store.load(sid)
    assert kept is not None and kept.switch == progress, "a commit without progress keeps it"
    store.commit(
        sid, StepCommit(4, 5, stages_at(5), b"r5", 10.0, 3, b"obs5", 8, model_version="v2")
    )
    moved = store.load(sid)
    assert moved is not None and moved.model_version == "v2" and moved.switch is None


def test_the_revision_that_moved_the_version_is_kept_with_it(store: SessionStore) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    loaded = store.load(sid)
    assert loaded is not None and loaded.version_revision == 0
    moving = StepCommit(0, 1, stages_at(1), b"r1", 10.0, 3, model_version="v2", version_revision=42)
    store.commit(sid, moving)
    store.commit(sid, StepCommit(1, 2, stages_at(2), b"r2", 10.0, 3))  # a step that stays
    record = store.load(sid)
    assert record is not None and (record.model_version, record.version_revision) == ("v2", 42)


def test_a_session_asking_for_replicas_is_not_acknowledged_without_them(
    store: SessionStore,
) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    commit = StepCommit(0, 1, stages_at(1), b"r1", 10.0, 3, wait_replicas=1, wait_timeout_s=0.05)
    with pytest.raises(NotReplicated):
        store.commit(sid, commit)
    record = store.load(sid)
    assert record is not None and record.seq == 1, "the primary holds the write"
    with pytest.raises(NotReplicated):
        store.confirm_replicated(sid, 1, 0.05)


def test_a_lone_store_reports_no_replicas(store: SessionStore) -> None:
    assert store.replicas() == 0


def test_the_record_after_a_commit_is_what_the_store_holds(store: SessionStore) -> None:
    """`committed` (how the coordinator's session cache applies its own commits) agrees with
    the store after every kind of commit: level, a stage lagging, replay progress, a student
    state, switch progress, a version move, level again."""
    sid = new_id()
    store.create(fresh_record(sid))
    progress = Anchor(1, {StageIndex(k): b"replayed-%d" % k for k in range(3)})
    switch = SwitchProgress("v2", 4, {StageIndex(0): b"\x00new0"}, exact=False)
    lagging = {k: v for k, v in stages_at(2).items() if k != 1}
    commits = [
        StepCommit(0, 1, stages_at(1), b"r1", 10.0, 3, b"obs1", 8),
        StepCommit(1, 2, lagging, b"r2", 10.0, 3, b"obs2", 8),
        StepCommit(
            2, 3, {}, b"r3", 10.0, 3, b"obs3", 8, student=StageState(3, b"g"), anchor=progress
        ),
        StepCommit(3, 4, stages_at(4), b"r4", 10.0, 3, b"obs4", 8, switch=switch),
        StepCommit(4, 5, stages_at(5), b"r5", 10.0, 3, b"obs5", 8),
        StepCommit(5, 6, stages_at(6), b"r6", 10.0, 3, b"obs6", 8, model_version="v2"),
        StepCommit(6, 7, stages_at(7), b"r7", 10.0, 3, b"obs7", 8),
    ]
    for commit in commits:
        before = store.load(sid)
        assert before is not None
        assert store.commit(sid, commit).status is CommitStatus.COMMITTED
        assert store.load(sid) == committed(before, commit), f"after seq {commit.new_seq}"


def test_the_owner_is_stored_with_the_session(store: SessionStore) -> None:
    sid = new_id()
    record = SessionRecord(sid, 0, "v1", 10.0, "claimed", owner="robot-7")
    store.create(record)
    loaded = store.load(sid)
    assert loaded is not None and loaded.owner == "robot-7" and loaded.client_id == "claimed"
    outcome = store.commit(sid, step(0, 1, stages_at(1), b"r1", 10.0))
    after = store.load(sid)
    assert outcome.status is CommitStatus.COMMITTED and after is not None
    assert after.owner == "robot-7"


def test_an_owner_holds_at_most_its_limit_and_gone_sessions_stop_counting(
    store: SessionStore,
) -> None:
    owner = f"robot-{new_id()}"
    short_lived, kept = new_id(), new_id()
    store.create(fresh_record(short_lived, ttl_s=0.3))
    store.create(fresh_record(kept))
    assert store.reserve_for_owner(owner, short_lived, 2)
    assert store.reserve_for_owner(owner, kept, 2)
    assert store.reserve_for_owner(owner, kept, 2)  # counted once
    third = new_id()
    store.create(fresh_record(third))
    assert not store.reserve_for_owner(owner, third, 2)
    assert store.reserve_for_owner(f"other-{owner}", third, 2)  # each owner its own count
    deadline = time.monotonic() + EXPIRY_DEADLINE_S
    while not store.reserve_for_owner(owner, third, 2):  # once short_lived expires
        assert time.monotonic() < deadline, "an expired session still counts"
        time.sleep(0.05)
    store.release_for_owner(owner, kept)
    fourth = new_id()
    store.create(fresh_record(fourth))
    assert store.reserve_for_owner(owner, fourth, 2)
