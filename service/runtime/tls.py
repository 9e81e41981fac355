"""Mutual TLS for every gRPC hop, made in one place: server credentials that re-read their
files when they change, channel credentials, and the channel itself (secure or not).

A TLS folder (`--tls-dir`) is laid out as `actionmesh certs dev` writes it: `ca.pem` (the CA
every peer must be signed by) and `<role>.pem` / `<role>.key` per role. A process presents the
certificate of its role: the coordinator `coordinator` to robots and `shard` (the cluster's
own identity) to shards; a shard `shard`. The same folder turns on mutual TLS to etcd
(`etcd_tls`). With no folder, everything stays plaintext.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from actionmesh_client.client_tls import ClientTls, client_credentials
from state.etcd_url import EtcdTls, files_stamp

log = logging.getLogger(__name__)

CA_FILE = "ca.pem"
# A certificate names its role as this URI in its SANs (and as its subject CN).
IDENTITY_URI_PREFIX = "spiffe://actionmesh/"
ChannelOptions = Sequence[tuple[str, object]]


@dataclass(frozen=True)
class TlsFiles:
    """Where one role's certificate, its key and the trusted CA are."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of_role(cls, tls_dir: Path, role: str) -> TlsFiles:
        return cls(tls_dir / CA_FILE, tls_dir / f"{role}.pem", tls_dir / f"{role}.key")

    def check(self) -> None:
        """SystemExit naming the first file that cannot be read (a clear start-up error, not a
        handshake failure later)."""
        for path in (self.ca, self.cert, self.key):
            if not os.access(path, os.R_OK):
                raise SystemExit(
                    f"TLS: cannot read {path} (a --tls-dir holds ca.pem, <role>.pem and "
                    "<role>.key: see `actionmesh certs dev`)"
                )

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever one of the files is replaced or rewritten."""
        return files_stamp(self.ca, self.cert, self.key)


class _ReloadingConfig:
    """The certificate-configuration fetcher: gRPC calls it before each new handshake; it
    answers a new configuration when the files changed since the last one, else None."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self.initial = self._read()

    def _read(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.files.key.read_bytes(), self.files.cert.read_bytes())],
            root_certificates=self.files.ca.read_bytes(),
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self.files.stamp()
                if stamp == self._stamp:
                    return None
                config = self._read()
            except OSError as exc:  # mid-replacement: keep serving the current certificate
                log.warning("TLS: cannot re-read %s: %s", self.files.cert, exc)
                return None
            self._stamp = stamp
        log.info("TLS: certificate files changed; new connections use %s", self.files.cert)
        return config


def server_credentials(tls_dir: Path, role: str) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by the folder's CA and serve the
    role's certificate, re-read (for new connections) whenever its files change on disk."""
    files = TlsFiles.of_role(tls_dir, role)
    files.check()
    fetcher = _ReloadingConfig(files)
    # grpc-stubs types the fetcher's answer without the None that means "no change".
    fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", fetcher)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetch, require_client_authentication=True
    )


def channel_credentials(tls_dir: Path, role: str) -> grpc.ChannelCredentials:
    """A client's credentials: trust the folder's CA, present the role's certificate."""
    files = TlsFiles.of_role(tls_dir, role)
    files.check()
    return client_credentials(
        files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes()
    )


def client_tls(tls_dir: Path, role: str) -> ClientTls:
    """What a long-lived client channel presents (ReloadingChannel): the role's files, re-read
    when they change, for the channel's next connection."""
    files = TlsFiles.of_role(tls_dir, role)
    files.check()
    return ClientTls(files.ca, files.cert, files.key)


def etcd_tls(tls_dir: Path | None, role: str) -> EtcdTls | None:
    """With a TLS folder, etcd is reached over mutual TLS too, presenting the role's
    certificate (None: plaintext)."""
    if tls_dir is None:
        return None
    files = TlsFiles.of_role(tls_dir, role)
    files.check()
    return EtcdTls(files.ca, files.cert, files.key)


def add_port(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """The one port a server listens on: TLS only when credentials are given (no plaintext port
    beside it), plaintext otherwise. 0 when it cannot bind."""
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
