"""Client certificates rotated on disk are presented from the next reconnection on, without a
restart: the robot's client library (to a coordinator) and the coordinator's channel to a
shard (StageClient). Real mutual TLS over 127.0.0.1: a server that answers with the serial
number of the certificate its caller presented; the caller's certificate is re-issued on disk
(as `actionmesh certs dev` writes it: atomically); while the connection stays up the old one
is still presented; once the server restarts on the same port, the new one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from service.client import ActionMeshClient, ClientTls
from service.coordinator.routing.stage_client import StageClient
from service.local.dev_certs import Authority, issue, write_dev_certs, write_role
from service.proto import session_pb2, session_pb2_grpc, stage_pb2, stage_pb2_grpc
from service.runtime import tls
from service.runtime.identity import CallContext

pytestmark = pytest.mark.timeout(120)

PEER_CERT_KEY = "x509_pem_cert"  # the caller's certificate, in gRPC's auth context


def peer_serial(context: CallContext) -> str:
    """The serial number (hex) of the certificate the caller presented."""
    pem = context.auth_context()[PEER_CERT_KEY][0]
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def serial_on_disk(folder: Path, role: str) -> str:
    cert = x509.load_pem_x509_certificate((folder / f"{role}.pem").read_bytes())
    return format(cert.serial_number, "x")


def rotate(folder: Path, role: str) -> str:
    """A new certificate and key for `role` from the folder's CA, written as `certs dev` does;
    its serial."""
    write_role(folder, role, *issue(Authority.load(folder), role))
    return serial_on_disk(folder, role)


class SerialSessions(session_pb2_grpc.SessionServiceServicer):
    def GetSession(  # noqa: N802
        self, request: session_pb2.GetSessionRequest, context: grpc.ServicerContext
    ) -> session_pb2.SessionInfo:
        return session_pb2.SessionInfo(
            session_id=request.session_id, client_id=peer_serial(context)
        )


class SerialStage(stage_pb2_grpc.StageServiceServicer):
    def Info(  # noqa: N802
        self, request: stage_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> stage_pb2.InfoReply:
        return stage_pb2.InfoReply(replica_id=peer_serial(context))


class TlsServer:
    """One servicer behind mutual TLS on a fixed 127.0.0.1 port, restartable on that port."""

    def __init__(self, folder: Path, role: str, register: Callable[[grpc.Server], None]) -> None:
        self.folder, self.role, self.register = folder, role, register
        self.port = 0
        self.server = self._start()

    def _start(self) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
        )
        self.register(server)
        credentials = tls.server_credentials(self.folder, self.role)
        self.port = tls.add_port(server, f"127.0.0.1:{self.port}", credentials)
        assert self.port, "cannot bind"
        server.start()
        return server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restart(self) -> None:
        """Every connection to it is closed; callers reconnect."""
        self.server.stop(None).wait()
        self.server = self._start()

    def stop(self) -> None:
        self.server.stop(None)


def until(answer: Callable[[], str], want: str, timeout_s: float = 15.0) -> list[str]:
    """Ask until `want` is answered; every answer seen (pytest.fail if never)."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(answer())
        if seen[-1] == want:
            return seen
        time.sleep(0.2)
    pytest.fail(f"never answered {want}; saw {sorted(set(seen))}")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_dev_certs(tmp_path / "tls")
    return tmp_path / "tls"


@pytest.fixture
def coordinator(folder: Path) -> Iterator[TlsServer]:
    def register(server: grpc.Server) -> None:
        session_pb2_grpc.add_SessionServiceServicer_to_server(SerialSessions(), server)

    running = TlsServer(folder, "coordinator", register)
    yield running
    running.stop()


@pytest.fixture
def shard(folder: Path) -> Iterator[TlsServer]:
    def register(server: grpc.Server) -> None:
        stage_pb2_grpc.add_StageServiceServicer_to_server(SerialStage(), server)

    running = TlsServer(folder, "shard", register)
    yield running
    running.stop()


def test_the_client_library_presents_a_rotated_certificate_once_it_reconnects(
    folder: Path, coordinator: TlsServer
) -> None:
    old = serial_on_disk(folder, "robot-a")
    with ActionMeshClient(
        [coordinator.address], tls=ClientTls.from_dir(folder, "robot-a")
    ) as client:

        def presented() -> str:
            return client.session_info("any").client_id

        assert presented() == old
        new = rotate(folder, "robot-a")
        assert new != old
        time.sleep(1.5)  # past the client's look at the files: the connection keeps its cert
        assert presented() == old
        coordinator.restart()
        seen = until(presented, new)
        assert set(seen) <= {old, new}


def test_a_coordinators_channel_to_a_shard_presents_a_rotated_certificate_once_it_reconnects(
    folder: Path, shard: TlsServer
) -> None:
    client = StageClient(0, shard.address, tls.client_tls(folder, "shard"))
    try:

        def presented() -> str:
            return client.info(5.0).replica_id

        old = presented()
        assert old == serial_on_disk(folder, "shard")
        new = rotate(folder, "shard")  # the shard's own server certificate turns over too
        time.sleep(1.5)
        assert presented() == old
        shard.restart()
        seen = until(presented, new)
        assert set(seen) <= {old, new}
    finally:
        client.close()
