"""What only the Redis store does, against a real redis-server on a free port (EmbeddedRedis):
key layout, TTLs as Redis sees them, retries, a stopped server. The contract every store keeps
is tests/integration/test_store_contract.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from service.local.embedded_redis import EmbeddedRedis
from state.redis_store import RETRY_ATTEMPTS, RedisSessionStore
from state.session import (
    SessionId,
)
from state.store import StoreUnavailable
from tests.support.session_records import fresh_record, logged, new_id, stages_at, step

pytestmark = pytest.mark.timeout(30)

SOCKET_TIMEOUT_S = 1.0
EXPIRY_DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture
def store(server: EmbeddedRedis) -> Iterator[RedisSessionStore]:
    store = RedisSessionStore(server.url, socket_timeout_s=SOCKET_TIMEOUT_S)
    yield store
    store.close()


@pytest.fixture
def raw(server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def retries(operation: str) -> float:
    labels = {"operation": operation}
    return REGISTRY.get_sample_value("actionmesh_state_retries_total", labels) or 0.0


def test_commit_refreshes_ttl(store: RedisSessionStore, raw: redis.Redis) -> None:
    sid = new_id()
    store.create(fresh_record(sid, ttl_s=2.0))
    key = f"am:{{{sid}}}:session"
    before_ms = raw.pttl(key)
    assert 0 < before_ms <= 2000
    store.commit(sid, step(0, 1, stages_at(1), b"r1", 30.0))
    assert raw.pttl(key) > 25_000
    ttl_left = store.ttl_left_s(sid)
    assert ttl_left is not None and 25.0 < ttl_left <= 30.0


def test_every_key_carries_the_hash_tag(store: RedisSessionStore, raw: redis.Redis) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    store.commit(sid, step(0, 1, stages_at(1), b"r1", 10.0))
    keys = [key.decode() for key in raw.scan_iter(match=f"*{sid}*")]
    assert keys
    assert all(key.startswith(f"am:{{{sid}}}:") for key in keys), keys


def test_ping(store: RedisSessionStore) -> None:
    assert store.ping() is True


def test_stopped_server_makes_store_unavailable_quickly(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as embedded:
        store = RedisSessionStore(embedded.url, socket_timeout_s=SOCKET_TIMEOUT_S)
        store.create(fresh_record(SessionId("s1")))
    retries_before = retries("load")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=embedded.url):
        store.load(SessionId("s1"))
    assert time.monotonic() - started < 2.0
    assert retries("load") - retries_before == RETRY_ATTEMPTS - 1
    with pytest.raises(StoreUnavailable):
        store.commit(SessionId("s1"), step(0, 1, stages_at(1), b"r1", 10.0))
    assert store.ping() is False
    store.close()


def test_stop_ends_the_redis_process(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path).start()
    pid = embedded.pid
    os.kill(pid, 0)  # alive: no exception
    embedded.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_delete_removes_the_log_too(store: RedisSessionStore, raw: redis.Redis) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    logged(store, sid, steps=3, limit=8)
    assert store.delete(sid)
    assert list(raw.scan_iter(match=f"am:{{{sid}}}:*")) == []


def test_an_unreadable_switch_progress_is_dropped_not_fatal(
    store: RedisSessionStore, raw: redis.Redis
) -> None:
    sid = new_id()
    store.create(fresh_record(sid))
    raw.hset(f"am:{{{sid}}}:session", "switch", b"\x00")
    loaded = store.load(sid)
    assert loaded is not None and loaded.switch is None
