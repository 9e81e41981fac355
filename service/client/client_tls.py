"""Mutual TLS for the client library: what a robot presents to coordinators and trusts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from service.runtime.tls import TlsFiles, client_credentials

Pem = bytes | str | Path  # PEM bytes, or the path of a PEM file


@dataclass(frozen=True)
class ClientTls:
    """The CA coordinators' certificates are signed by, and this robot's certificate and key
    (each PEM bytes or a file path). A coordinator with TLS on refuses a client without a
    certificate its CA signed."""

    ca: Pem
    cert: Pem | None = None
    key: Pem | None = None

    @classmethod
    def from_dir(cls, tls_dir: Path, identity: str) -> ClientTls:
        """From a folder as `actionmesh certs dev` writes it: ca.pem, <identity>.pem/.key."""
        files = TlsFiles.of_role(tls_dir, identity)
        return cls(files.ca, files.cert, files.key)

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files now (OSError if one cannot be read)."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTls: give both cert and key, or neither")
        cert = None if self.cert is None else _pem(self.cert)
        key = None if self.key is None else _pem(self.key)
        return client_credentials(_pem(self.ca), cert, key)


def _pem(value: Pem) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()
