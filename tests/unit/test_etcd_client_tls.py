"""EtcdConnection's client certificate follows its files: a call that fails after the files
were rotated makes the next calls use a client read from the new files; unchanged files, or
files caught mid-replacement, keep the current client. No etcd: the endpoint is a closed
port on 127.0.0.1, so every call fails as EtcdUnavailable (the real handshake is
tests/integration/test_etcd_cert_rotation.py)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from service.local.dev_certs import Authority, issue, write_dev_certs, write_role
from state.etcd_client import EtcdConnection, EtcdUnavailable
from state.etcd_url import EtcdTls

RENEWED = "certificate files changed"
UNREADABLE = "cannot re-read"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def files(tmp_path: Path) -> EtcdTls:
    folder = tmp_path / "tls"
    write_dev_certs(folder, roles=("coordinator",))
    return EtcdTls(folder / "ca.pem", folder / "coordinator.pem", folder / "coordinator.key")


def rotate(files: EtcdTls) -> None:
    """A new certificate and key from the same CA, written atomically as `certs dev` does."""
    folder = files.cert.parent
    write_role(folder, "coordinator", *issue(Authority.load(folder), "coordinator"))


def fail_once(etcd: EtcdConnection) -> None:
    with pytest.raises(EtcdUnavailable):
        etcd.get("k")


def test_a_failure_after_rotation_renews_the_client_once(
    files: EtcdTls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="state.etcd_client")
    etcd = EtcdConnection(f"etcd://127.0.0.1:{closed_port()}", 0.5, files)
    try:
        fail_once(etcd)
        fail_once(etcd)
        assert RENEWED not in caplog.text  # the files did not change: the same client
        rotate(files)
        fail_once(etcd)
        assert caplog.text.count(RENEWED) == 1
        fail_once(etcd)
        fail_once(etcd)
        assert caplog.text.count(RENEWED) == 1  # renewed for these files already
    finally:
        etcd.close()


def test_files_mid_replacement_keep_the_client_until_readable(
    files: EtcdTls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="state.etcd_client")
    etcd = EtcdConnection(f"etcd://127.0.0.1:{closed_port()}", 0.5, files)
    try:
        files.key.unlink()
        fail_once(etcd)  # still EtcdUnavailable, not an OSError from the re-read
        assert UNREADABLE in caplog.text and RENEWED not in caplog.text
        rotate(files)
        fail_once(etcd)
        assert caplog.text.count(RENEWED) == 1
    finally:
        etcd.close()
