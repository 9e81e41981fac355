"""etcd URLs (`etcd://h1:2379,h2:2379`): parsed here, without importing an etcd client, so
that settings can refuse a bad one before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 2379


def files_stamp(*paths: Path) -> tuple[int, ...]:
    """Changes whenever one of the files is replaced or rewritten (OSError while one is
    missing). Here rather than in service/runtime/tls.py, which uses it too, because state/
    imports nothing from service/."""
    stamps: list[int] = []
    for path in paths:
        st = path.stat()
        stamps += [st.st_mtime_ns, st.st_ino, st.st_size]
    return tuple(stamps)


@dataclass(frozen=True)
class EtcdTls:
    """Mutual TLS to etcd (PEM files): the CA etcd's certificate is signed by, and the
    certificate and key this client presents (etcd started with --client-cert-auth)."""

    ca: Path
    cert: Path
    key: Path

    def stamp(self) -> tuple[int, ...]:
        return files_stamp(self.ca, self.cert, self.key)


def parse_etcd_url(url: str) -> list[tuple[str, int]]:
    """`etcd://h1:p1,h2:p2` → [(h1, p1), (h2, p2)]; a missing port is 2379."""
    scheme, sep, rest = url.partition("://")
    hosts, _, path = rest.partition("/")
    if scheme != "etcd" or not sep or path or not hosts:
        raise ValueError(f"bad etcd URL {url!r}: use etcd://host:port[,host:port...]")
    endpoints = []
    for item in hosts.split(","):
        host, port = _host_port(item.strip(), url)
        endpoints.append((host, port))
    return endpoints


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:2379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad endpoint {item!r} in etcd URL {url!r}")
    return host, int(port) if port else DEFAULT_PORT
