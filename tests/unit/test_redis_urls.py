"""The sentinel and cluster URLs' parsing, and the store and retry policy chosen by URL (no
connection)."""

from __future__ import annotations

import pytest

from state.backends import open_session_store
from state.redis_store import (
    CLUSTER_RETRY,
    DIRECT_RETRY,
    SENTINEL_RETRY,
    RedisSessionStore,
    retry_policy_for,
)
from state.redis_url import (
    CLUSTER_URL_FORM,
    SENTINEL_URL_FORM,
    ClusterUrl,
    SentinelUrl,
    parse_cluster_url,
    parse_sentinel_url,
)

SOCKET_TIMEOUT_S = 1.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,10.0.0.3:26381/actionmesh/0",
            SentinelUrl(
                (("127.0.0.1", 26379), ("127.0.0.1", 26380), ("10.0.0.3", 26381)), "actionmesh", 0
            ),
        ),
        ("redis+sentinel://s1:26379/am-prod.1/3", SentinelUrl((("s1", 26379),), "am-prod.1", 3)),
        ("redis+sentinel://s1:26379/actionmesh", SentinelUrl((("s1", 26379),), "actionmesh", 0)),
        (
            "redis+sentinel://[::1]:26379/actionmesh/0/",
            SentinelUrl((("::1", 26379),), "actionmesh", 0),
        ),
        (
            "redis+sentinel://:p%40ss@s1:1,s2:2/actionmesh/0",
            SentinelUrl((("s1", 1), ("s2", 2)), "actionmesh", 0, None, "p@ss"),
        ),
        (
            "redis+sentinel://am:pw@s1:1/actionmesh/0",
            SentinelUrl((("s1", 1),), "actionmesh", 0, "am", "pw"),
        ),
    ],
)
def test_sentinel_url_parses(url: str, expected: SentinelUrl) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://s1:6379/0", "the scheme must be redis+sentinel"),
        ("redis+sentinel:///actionmesh/0", "'' is not host:port"),
        ("redis+sentinel://s1/actionmesh/0", "'s1' is not host:port"),
        ("redis+sentinel://s1:port/actionmesh/0", "'s1:port' is not host:port"),
        ("redis+sentinel://s1:0/actionmesh/0", "'s1:0' is not host:port"),
        ("redis+sentinel://s1:70000/actionmesh/0", "is not host:port"),
        ("redis+sentinel://s1:1,/actionmesh/0", "'' is not host:port"),
        ("redis+sentinel://s1:1", "the path must be /<service>[/<db>]"),
        ("redis+sentinel://s1:1/", "the path must be /<service>[/<db>]"),
        ("redis+sentinel://s1:1/my master/0", "the path must be"),
        ("redis+sentinel://s1:1/actionmesh/0/extra", "the path must be"),
        ("redis+sentinel://s1:1/actionmesh/zero", "the db 'zero' is not a number"),
        ("redis+sentinel://s1:1/actionmesh/0?ssl=true", "?query"),
    ],
)
def test_bad_sentinel_url_names_the_expected_form(url: str, why: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_sentinel_url(url)
    assert why in str(error.value)
    assert SENTINEL_URL_FORM in str(error.value)


def test_bad_sentinel_url_does_not_echo_the_password() -> None:
    with pytest.raises(ValueError) as error:
        parse_sentinel_url("redis+sentinel://:hunter2@s1/actionmesh/0")
    assert "hunter2" not in str(error.value)


def test_open_session_store_chooses_by_scheme() -> None:
    store = open_session_store("redis+sentinel://127.0.0.1:1/actionmesh/0", SOCKET_TIMEOUT_S)
    assert isinstance(store, RedisSessionStore)  # no connection is made before the first call
    store.close()
    with pytest.raises(ValueError, match="redis\\+sentinel://host:port"):
        open_session_store("sentinel://127.0.0.1:1/actionmesh/0", SOCKET_TIMEOUT_S)
    with pytest.raises(ValueError, match="expected redis\\+sentinel://"):
        open_session_store("redis+sentinel://127.0.0.1/actionmesh/0", SOCKET_TIMEOUT_S)


def test_retry_policy_follows_the_url_kind() -> None:
    assert retry_policy_for("redis://127.0.0.1:6379/0") == DIRECT_RETRY
    assert retry_policy_for("redis+sentinel://127.0.0.1:1/actionmesh/0") == SENTINEL_RETRY
    assert retry_policy_for("redis+cluster://127.0.0.1:1") == CLUSTER_RETRY
    assert SENTINEL_RETRY.budget_s > 2 * DIRECT_RETRY.budget_s
    assert CLUSTER_RETRY.budget_s > 2 * DIRECT_RETRY.budget_s  # rides through a promotion


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,10.0.0.3:7002",
            ClusterUrl((("127.0.0.1", 7000), ("127.0.0.1", 7001), ("10.0.0.3", 7002))),
        ),
        ("redis+cluster://r1:7000/", ClusterUrl((("r1", 7000),))),
        ("redis+cluster://r1:7000/0", ClusterUrl((("r1", 7000),))),
        ("redis+cluster://[::1]:7000", ClusterUrl((("::1", 7000),))),
        ("redis+cluster://am:p%40ss@r1:1,r2:2", ClusterUrl((("r1", 1), ("r2", 2)), "am", "p@ss")),
        ("redis+cluster://:pw@r1:1", ClusterUrl((("r1", 1),), None, "pw")),
    ],
)
def test_cluster_url_parses(url: str, expected: ClusterUrl) -> None:
    assert parse_cluster_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://r1:7000/0", "the scheme must be redis+cluster"),
        ("redis+cluster://", "'' is not host:port"),
        ("redis+cluster://r1", "'r1' is not host:port"),
        ("redis+cluster://r1:7000,", "'' is not host:port"),
        ("redis+cluster://r1:99999", "is not host:port"),
        ("redis+cluster://r1:7000/3", "a Redis Cluster has only db 0"),
        ("redis+cluster://r1:7000?ssl=true", "?query"),
    ],
)
def test_bad_cluster_url_names_the_expected_form(url: str, why: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_cluster_url(url)
    assert why in str(error.value)
    assert CLUSTER_URL_FORM in str(error.value)


def test_a_cluster_store_connects_on_first_use_and_a_bad_url_fails_at_once() -> None:
    store = open_session_store("redis+cluster://127.0.0.1:1,127.0.0.1:2", SOCKET_TIMEOUT_S)
    assert isinstance(store, RedisSessionStore)  # no connection is made before the first call
    store.close()
    with pytest.raises(ValueError, match="only db 0"):
        open_session_store("redis+cluster://127.0.0.1:1/2", SOCKET_TIMEOUT_S)
