"""A throwaway certificate authority and one key pair per role, for local and test clusters
(`actionmesh certs dev`, `actionmesh up --tls`). Not for production: the CA key sits beside
the certificates it signed.

Layout of the folder (what `--tls-dir` expects, service/runtime/tls.py):

    ca.pem, ca.key           the CA (ca.key only to issue more; no process reads it)
    <role>.pem, <role>.key   each role's certificate and private key (keys 0600)

Every certificate names its identity twice: the subject CN is the role, and a SAN URI
`spiffe://actionmesh/<role>` (IDENTITY_URI_PREFIX) says the same for code that reads the
peer's identity from `grpc.ServicerContext.auth_context()`. Every certificate also carries the
SANs 127.0.0.1, ::1 and localhost (plus any `hosts` given), and may serve and be a client:
`shard` is the cluster's own identity, presented by shards as servers and by coordinators as
clients of shards.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.runtime.tls import IDENTITY_URI_PREFIX

CA_NAME = "ca"
CLUSTER_ROLES = ("coordinator", "shard", "admin", "redis", "etcd")
ROBOT_ROLES = ("robot-a", "robot-b")
DEFAULT_ROLES = (*CLUSTER_ROLES, *ROBOT_ROLES)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
VALID_DAYS = 30

_Key = ec.EllipticCurvePrivateKey


class CertsExist(FileExistsError):
    """The folder already holds certificates and `force` was not given."""


@dataclass(frozen=True)
class Authority:
    """A CA that can sign: its certificate and private key."""

    cert: x509.Certificate
    key: _Key

    @classmethod
    def load(cls, folder: Path) -> Authority:
        cert = x509.load_pem_x509_certificate((folder / f"{CA_NAME}.pem").read_bytes())
        key = serialization.load_pem_private_key((folder / f"{CA_NAME}.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{folder / (CA_NAME + '.key')}: not an EC private key")
        return cls(cert, key)


def identity_uri(role: str) -> str:
    return IDENTITY_URI_PREFIX + role


def new_authority(name: str = "actionmesh dev CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    authority: Authority, role: str, hosts: Sequence[str] = LOOPBACK_HOSTS
) -> tuple[x509.Certificate, _Key]:
    """A new key pair and certificate for `role`, signed by `authority` (a fresh serial each
    call), valid as server and client, with SANs for `hosts` and the role's identity URI."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role))]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return cert, key


def write_role(folder: Path, role: str, cert: x509.Certificate, key: _Key) -> tuple[Path, Path]:
    """<role>.pem and <role>.key (0600) in `folder`; each replaced atomically (a server that
    re-reads them mid-write sees the old file or the new one, never half of one)."""
    cert_path, key_path = folder / f"{role}.pem", folder / f"{role}.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def write_dev_certs(
    folder: Path,
    roles: Sequence[str] = DEFAULT_ROLES,
    hosts: Sequence[str] = LOOPBACK_HOSTS,
    force: bool = False,
) -> list[Path]:
    """A new CA and a certificate per role in `folder`; the files written. Raises CertsExist
    when the folder already has a ca.pem and not `force` (a second run would orphan every
    certificate the old CA signed)."""
    if (folder / f"{CA_NAME}.pem").exists() and not force:
        raise CertsExist(
            f"{folder} already holds certificates (ca.pem); pass --force to replace them"
        )
    folder.mkdir(parents=True, exist_ok=True)
    authority = new_authority()
    written = list(write_role(folder, CA_NAME, authority.cert, authority.key))
    for role in roles:
        written += write_role(folder, role, *issue(authority, role, hosts))
    return written


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask; an old tmp keeps its own
        f.write(data)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
