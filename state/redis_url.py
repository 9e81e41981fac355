"""Session store URLs beyond what redis-py parses itself: the Sentinel and Cluster forms, and
redaction."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_URL_FORM = "redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>[/<db>]"
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_URL_FORM = "redis+cluster://[[user]:password@]host:port[,host:port...][/0]"
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]+")  # what Sentinel accepts as a master name


@dataclass(frozen=True)
class RedisCredentials:
    """What the session store proves itself with beyond its URL: an AUTH password (read from a
    secrets file, so that it is on no command line; a password in the URL wins), and for a
    `rediss://` URL the CA the server's certificate is signed by and this client's certificate
    and key (PEM files)."""

    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __repr__(self) -> str:  # never print the password
        return f"RedisCredentials(password={'***' if self.password else None}, ca={self.ca})"


def read_secret(path: Path) -> str:
    """A secret from a file (its first line, without the newline); OSError if unreadable,
    ValueError if empty."""
    text = path.read_text().splitlines()
    if not text or not text[0]:
        raise ValueError(f"{path} is empty")
    return text[0]


@dataclass(frozen=True)
class SentinelUrl:
    """Where the sentinels listen and which of their services holds the sessions."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None  # of the Redis primary; the sentinels take none
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`redis+sentinel://[[user]:password@]h1:p1,h2:p2/<service>[/<db>]`, or ValueError."""
    parts, bad = _split(url, SENTINEL_SCHEME, SENTINEL_URL_FORM)
    segments = parts.path.removeprefix("/").removesuffix("/").split("/")
    if len(segments) > 2 or not _SERVICE_RE.fullmatch(segments[0]):
        raise bad("the path must be /<service>[/<db>], the service named as in sentinel.conf")
    if len(segments) == 2 and not segments[1].isdigit():
        raise bad(f"the db {segments[1]!r} is not a number")
    return SentinelUrl(
        sentinels=parts.hosts,
        service=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=parts.username,
        password=parts.password,
    )


@dataclass(frozen=True)
class ClusterUrl:
    """Where to start discovering a Redis Cluster (any reachable node will do; the client learns
    the others and the slot map from it). A Cluster has only db 0."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def parse_cluster_url(url: str) -> ClusterUrl:
    """`redis+cluster://[[user]:password@]h1:p1[,h2:p2...][/0]`, or ValueError."""
    parts, bad = _split(url, CLUSTER_SCHEME, CLUSTER_URL_FORM)
    if parts.path.strip("/") not in ("", "0"):
        raise bad("a Redis Cluster has only db 0")
    return ClusterUrl(nodes=parts.hosts, username=parts.username, password=parts.password)


@dataclass(frozen=True)
class _Parts:
    hosts: tuple[tuple[str, int], ...]
    path: str
    username: str | None
    password: str | None


def _split(url: str, scheme: str, form: str) -> tuple[_Parts, Callable[[str], ValueError]]:
    """What the Sentinel and Cluster forms share: scheme, credentials, hosts; and the error
    maker that names the form expected."""

    def bad(why: str) -> ValueError:
        return ValueError(f"bad session store URL {redacted(url)!r}: {why}; expected {form}")

    split = urlsplit(url)
    if split.scheme != scheme:
        raise bad(f"the scheme must be {scheme}")
    if split.query or split.fragment:
        raise bad("a ?query or #fragment is not understood")
    userinfo, has_userinfo, hosts = split.netloc.rpartition("@")
    username, has_password, password = userinfo.partition(":")
    parts = _Parts(
        hosts=tuple(_host_port(item, bad) for item in hosts.split(",")),
        path=split.path,
        username=unquote(username) if has_userinfo and username else None,
        password=unquote(password) if has_password else None,
    )
    return parts, bad


def checked_store_url(url: str) -> str:
    """The URL unchanged if its Sentinel or Cluster form parses (ValueError if not); other
    schemes are redis-py's and the store's to judge."""
    scheme = urlsplit(url).scheme
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme == CLUSTER_SCHEME:
        parse_cluster_url(url)
    return url


def redacted(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _host_port(item: str, bad: Callable[[str], ValueError]) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"{item!r} is not host:port")
    return host, int(port)
