"""Redis client certificates rotated on disk are used from the next connection on, without a
restart of the store's process. A real redis-server over mutual TLS on 127.0.0.1 (Debian's,
tests/support/tls_redis.py); every file is replaced by a new CA's (`certs dev --force`) and the
server restarted with them, so that the old client certificate is refused (checked with a store
that kept copies of the old files). The store made before the rotation goes on."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from service.local.dev_certs import write_dev_certs
from service.runtime.tls import TlsFiles
from state.redis_store import RedisSessionStore
from state.redis_url import RedisCredentials
from state.store import StoreUnavailable
from tests.support.session_records import fresh_record, new_id
from tests.support.tls_redis import TlsRedis
from tests.support.waiting import until_no

pytestmark = pytest.mark.timeout(120)

ROLES = ("redis", "coordinator")


def store_presenting(server: TlsRedis, folder: Path) -> RedisSessionStore:
    files = TlsFiles.of_role(folder, "coordinator")
    credentials = RedisCredentials(None, files.ca, files.cert, files.key)
    return RedisSessionStore(server.url, socket_timeout_s=1.0, credentials=credentials)


def test_a_store_follows_a_new_ca_without_restart(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    write_dev_certs(folder, ROLES)
    old = shutil.copytree(folder, tmp_path / "old")
    with TlsRedis(tmp_path / "redis", TlsFiles.of_role(folder, "redis")) as server:
        store = store_presenting(server, folder)
        stale = store_presenting(server, old)
        try:
            before = fresh_record(new_id())
            store.create(before)
            assert stale.load(before.session_id) == before  # the old files are good until now

            write_dev_certs(folder, ROLES, force=True)
            server.restart()  # trusts only the new CA, presents a certificate it signed
            restarted = time.monotonic()
            with pytest.raises(StoreUnavailable):
                stale.load(before.session_id)  # the old client certificate is refused now

            after = fresh_record(new_id())
            until_no(StoreUnavailable, lambda: store.create(after))
            print(f"\nthe store answered {time.monotonic() - restarted:.2f}s after the restart")
            assert store.load(after.session_id) == after
            with pytest.raises(StoreUnavailable):
                stale.load(after.session_id)  # still refused: the store reconnected with the new
        finally:
            stale.close()
            store.close()
