"""A session store over mutual TLS (`rediss://`) against a real redis-server that serves TLS
only: the coordinator's certificate is accepted (the store contract runs on it too, in
test_store_contract.py); no certificate, another CA's certificate, or plaintext is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.local.dev_certs import write_dev_certs
from service.runtime.tls import TlsFiles
from state.redis_store import RedisSessionStore
from state.redis_url import RedisCredentials
from state.store import StoreUnavailable
from tests.support.session_records import fresh_record, new_id
from tests.support.tls_redis import TlsRedis

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cluster's TLS folder, and a stranger's signed by another CA."""
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    write_dev_certs(ours, ("redis", "coordinator"))
    write_dev_certs(theirs, ("coordinator",))
    return ours, theirs


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, folders: tuple[Path, Path]
) -> Iterator[TlsRedis]:
    with TlsRedis(tmp_path_factory.mktemp("redis"), TlsFiles.of_role(folders[0], "redis")) as s:
        yield s


def store(server: TlsRedis, credentials: RedisCredentials) -> RedisSessionStore:
    return RedisSessionStore(server.url, socket_timeout_s=1.0, credentials=credentials)


def presenting(files: TlsFiles) -> RedisCredentials:
    return RedisCredentials(None, files.ca, files.cert, files.key)


def test_the_clusters_certificate_opens_and_reads_a_session(
    server: TlsRedis, folders: tuple[Path, Path]
) -> None:
    coordinator = store(server, presenting(TlsFiles.of_role(folders[0], "coordinator")))
    try:
        record = fresh_record(new_id())
        coordinator.create(record)
        assert coordinator.load(record.session_id) == record
    finally:
        coordinator.close()


def test_no_certificate_another_cas_or_plaintext_is_refused(
    server: TlsRedis, folders: tuple[Path, Path]
) -> None:
    ours, theirs = folders
    ca = TlsFiles.of_role(ours, "coordinator").ca  # each client verifies the server
    stranger = TlsFiles.of_role(theirs, "coordinator")
    for credentials in (
        RedisCredentials(None, ca),  # no certificate
        presenting(TlsFiles(ca, stranger.cert, stranger.key)),  # another CA's
    ):
        refused = store(server, credentials)
        try:
            with pytest.raises(StoreUnavailable):
                refused.load(new_id())
        finally:
            refused.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2.0).ping()
