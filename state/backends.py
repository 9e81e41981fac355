"""Backends are chosen from URLs here, and only here."""

from __future__ import annotations

from urllib.parse import urlparse

from state.leadership import ReplicaInfo, ReplicaMembership, RoutingTable
from state.redis_url import redacted
from state.store import SessionStore


def open_session_store(url: str, timeout_s: float) -> SessionStore:
    """Redis, direct (`redis://`), through Sentinel (`redis+sentinel://`, which follows the
    primary across failovers and retries for longer while one is under way), or a Redis
    Cluster (`redis+cluster://`, sessions spread over its primaries by hash tag)."""
    scheme = urlparse(url).scheme
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        from state.redis_store import RedisSessionStore

        return RedisSessionStore(url, socket_timeout_s=timeout_s)
    raise ValueError(
        f"unsupported session store URL {redacted(url)!r}: use redis://host:port/db or "
        "redis+sentinel://host:port[,host:port...]/<service>/<db> or "
        "redis+cluster://host:port[,host:port...]"
    )


def open_replica_membership(
    url: str, cluster: str, info: ReplicaInfo, lease_ttl_s: float
) -> ReplicaMembership:
    """A replica's registration and campaign for its stage; call start() to begin."""
    if urlparse(url).scheme == "etcd":
        from state.etcd_membership import EtcdReplicaMembership

        return EtcdReplicaMembership(url, cluster, info, lease_ttl_s)
    raise ValueError(f"unsupported leadership URL {url!r}: use etcd://host:port[,host:port...]")


def open_routing_table(url: str, cluster: str) -> RoutingTable:
    """A coordinator's view of every stage's leader and replicas; call start() to load it."""
    if urlparse(url).scheme == "etcd":
        from state.etcd_routing import EtcdRoutingTable

        return EtcdRoutingTable(url, cluster)
    raise ValueError(f"unsupported leadership URL {url!r}: use etcd://host:port[,host:port...]")
