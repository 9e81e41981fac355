"""caller_identity against a real TLS channel: what gRPC's auth context really holds for a
verified client certificate (the unit tests use a fake context of that shape). Throwaway
certificates made here with `cryptography`; a server on 127.0.0.1 that requires a client
certificate and answers with the identity it read. Until the servers themselves serve TLS
(the transport half of issue 15), this is the mTLS path's end-to-end check."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.runtime.identities_file import IdentitiesFile
from service.runtime.identity import Scope, Unauthenticated, caller_identity

pytestmark = pytest.mark.timeout(60)

METHOD = "/test.Identity/WhoAmI"


@dataclass(frozen=True)
class Pem:
    key: bytes
    cert: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue(
    ca: Pem | None, cn: str | None, sans: list[x509.GeneralName], *, is_ca: bool = False
) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.UTC)
    if ca is None:
        issuer, signer = subject, key
    else:
        ca_cert = x509.load_pem_x509_certificate(ca.cert)
        issuer = ca_cert.subject
        signer = serialization.load_pem_private_key(ca.key, None)  # type: ignore[assignment]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not cn)
    cert = builder.sign(signer, hashes.SHA256())
    return Pem(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki() -> dict[str, Pem]:
    ca = issue(None, "actionmesh test CA", [], is_ca=True)
    return {
        "ca": ca,
        "server": issue(ca, "localhost", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        "robot": issue(
            ca,
            "robot-7",
            [x509.UniformResourceIdentifier("spiffe://actionmesh/robot/robot-7")],
        ),
        "uri-only": issue(
            ca,
            None,
            [x509.UniformResourceIdentifier("spiffe://actionmesh/robot/robot-9")],
        ),
    }


@pytest.fixture(scope="module")
def address(pki: dict[str, Pem]) -> Iterator[str]:
    directory = IdentitiesFile(None, frozenset({Scope.STEP}))

    def who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            found = caller_identity(context, "mtls", directory)
        except Unauthenticated as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        assert found is not None
        return f"{found.name}|{found.via}".encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Identity", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(pki["server"].key, pki["server"].cert)],
        root_certificates=pki["ca"].cert,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def ask(address: str, ca: Pem, client: Pem | None) -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    with grpc.secure_channel(address, credentials) as channel:
        reply: bytes = channel.unary_unary(METHOD)(b"", timeout=10)
        return reply


def test_the_client_certificates_cn_is_the_identity(address: str, pki: dict[str, Pem]) -> None:
    assert ask(address, pki["ca"], pki["robot"]) == b"robot-7|certificate"


def test_without_a_cn_the_uri_san_is_the_identity(address: str, pki: dict[str, Pem]) -> None:
    assert (
        ask(address, pki["ca"], pki["uri-only"]) == b"spiffe://actionmesh/robot/robot-9|certificate"
    )


def test_a_client_without_a_certificate_does_not_get_in(address: str, pki: dict[str, Pem]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ask(address, pki["ca"], None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself fails
