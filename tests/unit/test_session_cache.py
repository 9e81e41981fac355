"""The coordinator's session cache: an entry serves only the very next step, once, and never
outlives its TTL or the capacity."""

from __future__ import annotations

import time

import pytest

from service.coordinator.session_cache import SessionCache
from state.session import SessionId, SessionRecord


def record(sid: str, seq: int, ttl_s: float = 30.0) -> SessionRecord:
    return SessionRecord(SessionId(sid), seq, "v1", ttl_s)


def test_an_entry_serves_only_the_next_seq_and_only_once() -> None:
    cache = SessionCache(8)
    cache.put(record("a", 5))
    assert cache.take(SessionId("a"), 6) == record("a", 5)
    assert cache.take(SessionId("a"), 6) is None, "taken: the step that uses it owns it"
    cache.put(record("a", 5))
    assert cache.take(SessionId("a"), 5) is None, "a retry reads the store"
    assert cache.take(SessionId("a"), 6) is None, "and the entry is gone"
    cache.put(record("a", 5))
    assert cache.take(SessionId("a"), 8) is None, "a skipped seq reads the store"


def test_an_entry_expires_with_the_session_ttl() -> None:
    cache = SessionCache(8)
    cache.put(record("a", 1, ttl_s=0.01))
    time.sleep(0.02)
    assert cache.take(SessionId("a"), 2) is None


def test_capacity_drops_the_least_recently_committed_and_zero_turns_it_off() -> None:
    cache = SessionCache(2)
    for sid in ("a", "b", "c"):
        cache.put(record(sid, 1))
    assert len(cache) == 2
    assert cache.take(SessionId("a"), 2) is None
    assert cache.take(SessionId("c"), 2) == record("c", 1)
    off = SessionCache(0)
    off.put(record("a", 1))
    assert len(off) == 0 and off.take(SessionId("a"), 2) is None


def test_an_entry_a_caller_is_refused_stays_for_the_next_caller() -> None:
    cache = SessionCache(8)
    cache.put(record("a", 5))

    def refuse(_: SessionRecord) -> None:
        raise PermissionError("not yours")

    with pytest.raises(PermissionError):
        cache.take(SessionId("a"), 6, refuse)
    assert cache.take(SessionId("a"), 6) == record("a", 5)
