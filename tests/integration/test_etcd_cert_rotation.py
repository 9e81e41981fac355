"""etcd client certificates rotated on disk are used from the next reconnection on, without a
restart of the client's process. A real etcd over mutual TLS on 127.0.0.1; every file is
replaced by a new CA's (`certs dev --force`) and etcd restarted with them, so that the old
client certificate is refused (checked with a client that kept copies of the old files). A
connection made before (its lease, its key writes) and a routing table's watch go on."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.local.dev_certs import write_dev_certs
from service.local.embedded_etcd import EmbeddedEtcd
from service.runtime.tls import etcd_tls
from state.etcd_client import EtcdConnection, EtcdUnavailable
from state.etcd_keys import desired_version_key, desired_version_value
from state.etcd_routing import EtcdRoutingTable
from state.etcd_url import EtcdTls
from tests.support.waiting import until_no

pytestmark = pytest.mark.timeout(180)

CLUSTER = "rotation"
TIMEOUT_S = 1.0


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s}s")
        time.sleep(0.1)


def set_desired(etcd: EtcdConnection, version: str, lease_id: int) -> None:
    etcd.put(desired_version_key(CLUSTER), desired_version_value(version, "test", "now"), lease_id)


def test_connection_and_watch_follow_a_new_ca_without_restart(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    write_dev_certs(folder, roles=("etcd", "coordinator"))
    old = shutil.copytree(folder, tmp_path / "old")
    client_files = etcd_tls(folder, "coordinator")
    assert client_files is not None
    server_files = EtcdTls(folder / "ca.pem", folder / "etcd.pem", folder / "etcd.key")
    with EmbeddedEtcd(tmp_path / "etcd", tls=server_files) as server:
        etcd = EtcdConnection(server.url, TIMEOUT_S, client_files)
        table = EtcdRoutingTable(server.url, CLUSTER, request_timeout_s=TIMEOUT_S, tls=client_files)
        stale = EtcdConnection(server.url, TIMEOUT_S, etcd_tls(old, "coordinator"))
        try:
            table.start()
            lease_id, _ = etcd.grant(60)
            set_desired(etcd, "v1", lease_id)
            wait_for(lambda: table.desired_version() == "v1", "the table saw v1")
            stale.get("probe")  # the old files are good until the rotation

            write_dev_certs(folder, roles=("etcd", "coordinator"), force=True)
            server.restart()  # trusts only the new CA, presents a certificate it signed
            restarted = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                stale.get("probe")  # the old client certificate is refused now

            ttl = until_no(
                EtcdUnavailable, lambda: etcd.keepalive(lease_id)
            )  # the lease from before lives on
            print(f"\nconnection answered {time.monotonic() - restarted:.2f}s after the restart")
            assert ttl > 0
            until_no(EtcdUnavailable, lambda: set_desired(etcd, "v2", lease_id))
            wait_for(lambda: table.desired_version() == "v2", "the table's watch saw v2")
            assert table.connected
            print(f"routing table caught up {time.monotonic() - restarted:.2f}s after it")
            with pytest.raises(EtcdUnavailable):
                stale.get("probe")  # still refused: the others reconnected with the new files
        finally:
            stale.close()
            table.stop()
            etcd.close()
