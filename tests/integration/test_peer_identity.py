"""What a servicer learns of its caller over a real mutual-TLS handshake: the role its
certificate names (`certificate_name`, what `caller_identity` reads), for each client identity
`certs dev` issues; and a client without a certificate does not get in."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from actionmesh_client.client_tls import open_channel
from service.local.dev_certs import write_dev_certs
from service.runtime.identity import certificate_name
from service.runtime.tls import add_port, channel_credentials, server_credentials

METHOD = "/test.Identity/Who"


def _who(request: bytes, context: grpc.ServicerContext) -> bytes:
    return (certificate_name(context.auth_context()) or "").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("certs")
    write_dev_certs(folder)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "test.Identity", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = add_port(server, "127.0.0.1:0", server_credentials(folder, "coordinator"))
    server.start()
    try:
        yield f"127.0.0.1:{port}", folder
    finally:
        server.stop(None)


@pytest.mark.parametrize("role", ["robot-a", "robot-b", "admin", "shard"])
def test_the_servicer_sees_the_callers_role(served: tuple[str, Path], role: str) -> None:
    address, folder = served
    with open_channel(address, channel_credentials(folder, role)) as channel:
        who = channel.unary_unary(METHOD)(b"", timeout=5)
    assert who == role.encode()
