"""The sentinel URL's parsing, and the store and retry policy chosen by URL (no connection)."""

from __future__ import annotations

import pytest

from state.backends import open_session_store
from state.redis_store import (
    DIRECT_RETRY,
    SENTINEL_RETRY,
    RedisSessionStore,
    retry_policy_for,
)
from state.redis_url import SENTINEL_URL_FORM, SentinelUrl, parse_sentinel_url

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
    assert SENTINEL_RETRY.budget_s > 2 * DIRECT_RETRY.budget_s
