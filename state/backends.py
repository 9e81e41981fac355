"""Backends are chosen from URLs here, and only here."""

from __future__ import annotations

from urllib.parse import urlparse

from state.store import SessionStore


def open_session_store(url: str, timeout_s: float) -> SessionStore:
    scheme = urlparse(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        from state.redis_store import RedisSessionStore

        return RedisSessionStore(url, socket_timeout_s=timeout_s)
    raise ValueError(f"unsupported session store URL {url!r}: use redis://host:port/db")
