"""Mutual TLS for the client library: what a robot presents to coordinators and trusts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

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
        return cls(tls_dir / "ca.pem", tls_dir / f"{identity}.pem", tls_dir / f"{identity}.key")

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files now (OSError if one cannot be read)."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTls: give both cert and key, or neither")
        cert = None if self.cert is None else _pem(self.cert)
        key = None if self.key is None else _pem(self.key)
        return client_credentials(_pem(self.ca), cert, key)


def _pem(value: Pem) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def client_credentials(
    ca: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    """From PEM bytes; without cert and key, the server is verified but the client is not
    identified (a server that requires client certificates refuses it)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A secure channel with credentials, a plaintext one without."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))
