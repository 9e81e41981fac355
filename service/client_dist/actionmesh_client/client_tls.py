"""Mutual TLS for the client library: what a robot presents to coordinators and trusts, and
a channel that picks up a certificate rotated on disk (`ReloadingChannel`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

Pem = bytes | str | Path  # PEM bytes, or the path of a PEM file
# A rotated certificate is looked for at most this often (a few stat calls).
RELOAD_CHECK_S = 1.0


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

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever a file given by path is replaced or rewritten (empty: PEM bytes
        only, nothing to re-read). OSError while a file is missing."""
        stamps: list[int] = []
        for part in (self.ca, self.cert, self.key):
            if part is not None and not isinstance(part, bytes):
                st = Path(part).stat()
                stamps += [st.st_mtime_ns, st.st_ino, st.st_size]
        return tuple(stamps)


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


class _Connection:
    """Whether a channel has held one connection since its first: told by gRPC's
    connectivity callbacks."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.ever_ready = self.lost = False
        self._channel = channel
        channel.subscribe(self._on_state, try_to_connect=False)

    def stop(self) -> None:
        """No more callbacks (gRPC's polling thread for the channel ends)."""
        self._channel.unsubscribe(self._on_state)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self.ever_ready = True
        elif self.ever_ready:
            self.lost = True

    def settled(self) -> bool:
        """Connected, and never disconnected since."""
        return self.ever_ready and not self.lost


class ReloadingChannel:
    """A long-lived channel whose client certificate follows its files on disk, without a
    restart: once the files have changed and the channel has no connection, or has lost one
    since it was made (the peer restarted, the network broke), `current()` answers a new
    channel made from the new files, whose connection presents the new certificate. A
    connection that stays up keeps the certificate it was made with, as a server's open
    connections do. Replaced channels are closed with this object, so that calls still
    running on them finish. Plaintext (tls None) or PEM bytes: one channel for good."""

    def __init__(
        self, address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
    ) -> None:
        self.address, self._tls, self._options = address, tls, list(options)
        self._lock = threading.Lock()
        self._retired: list[grpc.Channel] = []
        self._checked = time.monotonic()
        self._stamp = tls.stamp() if tls is not None else ()
        self._channel = open_channel(address, None if tls is None else tls.credentials(), options)
        self._connection = _Connection(self._channel) if self._stamp else None

    def current(self) -> grpc.Channel:
        with self._lock:
            if self._connection is not None and not self._connection.settled():
                now = time.monotonic()
                if now - self._checked >= RELOAD_CHECK_S:
                    self._checked = now
                    self._renew_if_rotated()
            return self._channel

    def _renew_if_rotated(self) -> None:
        assert self._tls is not None
        try:
            stamp = self._tls.stamp()
            if stamp == self._stamp:
                return
            credentials = self._tls.credentials()
        except (OSError, ValueError) as exc:  # mid-replacement: keep the current channel
            log.warning("TLS to %s: cannot re-read the client certificate: %s", self.address, exc)
            return
        if self._connection is not None:
            self._connection.stop()
        self._retired.append(self._channel)
        self._stamp = stamp
        self._channel = open_channel(self.address, credentials, self._options)
        self._connection = _Connection(self._channel)
        log.info(
            "TLS to %s: client certificate files changed; reconnecting with them", self.address
        )

    def close(self) -> None:
        with self._lock:
            for channel in (*self._retired, self._channel):
                channel.close()
            self._retired.clear()
