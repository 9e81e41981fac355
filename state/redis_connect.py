"""How the session store's Redis client is made, by URL kind; kept apart from redis_store.py,
which uses the client, so each URL kind's connection options read in one place.

Three URL kinds: `redis://` (one server), `redis+sentinel://h1:p1,h2:p2/<service>/<db>` (the
primary that Sentinel names, followed across failovers) and `redis+cluster://h1:p1,h2:p2` (a
Redis Cluster: each session lives on the primary of its hash tag's slot; every script touches
that one slot).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from state.redis_url import (
    CLUSTER_SCHEME,
    SENTINEL_SCHEME,
    ClusterUrl,
    RedisCredentials,
    parse_cluster_url,
    parse_sentinel_url,
)


@dataclass(frozen=True)
class Clients:
    client: redis.Redis | RedisCluster
    sentinel: Sentinel | None
    create_script: Script
    commit_script: Script


_Connect = Callable[[], tuple[redis.Redis | RedisCluster, Sentinel | None]]


def client_factory(url: str, socket_timeout_s: float, credentials: RedisCredentials) -> _Connect:
    """What makes the store's client: parses the URL now (ValueError), connects when called."""
    if urlsplit(url).scheme == CLUSTER_SCHEME:
        return partial(_connect_cluster, parse_cluster_url(url), socket_timeout_s, credentials)
    return partial(connect, url, socket_timeout_s, credentials)


def _tls_options(url: str, credentials: RedisCredentials) -> dict[str, str]:
    """redis-py's TLS options for a rediss:// URL (none for others): the CA, and the client
    certificate a server started with tls-auth-clients asks for."""
    if urlsplit(url).scheme != "rediss":
        return {}
    files = {
        "ssl_ca_certs": credentials.ca,
        "ssl_certfile": credentials.cert,
        "ssl_keyfile": credentials.key,
    }
    return {name: str(path) for name, path in files.items() if path is not None}


def _connect_cluster(
    cluster: ClusterUrl, socket_timeout_s: float, credentials: RedisCredentials
) -> tuple[RedisCluster, Sentinel | None]:
    """A client of the Cluster the start-up nodes belong to; it reads the slot map now."""
    nodes = [ClusterNode(host, port) for host, port in cluster.nodes]  # type: ignore[no-untyped-call]
    try:
        client = RedisCluster(
            startup_nodes=nodes,
            username=cluster.username,
            password=cluster.password or credentials.password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            decode_responses=False,
            retry=Retry(
                NoBackoff(), 0
            ),  # tenacity in RedisSessionStore._call is the one retry policy
        )
    except RedisClusterException as exc:  # no start-up node answered: retried like one down
        raise redis.ConnectionError(f"no Redis Cluster node answered ({exc})") from exc
    return client, None


def connect(
    url: str, socket_timeout_s: float, credentials: RedisCredentials
) -> tuple[redis.Redis, Sentinel | None]:
    """A client of the server the URL names, or of the primary its sentinels name."""
    # redis-py's own retries are off: tenacity in RedisSessionStore._call is the one bounded,
    # counted policy.
    no_retry = Retry(NoBackoff(), 0)
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        client = redis.Redis.from_url(
            url,
            password=credentials.password,  # the URL's own password, if any, wins
            **_tls_options(url, credentials),
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            decode_responses=False,
            retry=no_retry,
        )
        return client, None
    target = parse_sentinel_url(url)
    timeouts = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s}
    sentinel_kwargs = {**timeouts, "retry": no_retry}  # for the sentinels themselves
    # redis.sentinel has annotations only from redis 8.2 on, hence the ignores (unused there).
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    client = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        target.service,
        db=target.db,
        username=target.username,
        password=target.password or credentials.password,
        decode_responses=False,
        retry=no_retry,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
    )
    return cast("redis.Redis", client), sentinel
