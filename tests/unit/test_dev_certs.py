"""`actionmesh certs dev`: every certificate chains to the CA, names its role as CN and SAN URI,
serves loopback, and its key is readable by the owner only; a second run does not overwrite."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from service.cli.main import main
from service.local.dev_certs import (
    DEFAULT_ROLES,
    Authority,
    CertsExist,
    issue,
    write_dev_certs,
)
from service.runtime.tls import TlsFiles


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_role_chains_to_the_ca_and_names_itself(tmp_path: Path) -> None:
    write_dev_certs(tmp_path)
    ca = load(tmp_path / "ca.pem")
    for role in DEFAULT_ROLES:
        cert = load(tmp_path / f"{role}.pem")
        cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == role
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://actionmesh/{role}"
        ]
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_certificate_from_another_ca_does_not_chain(tmp_path: Path) -> None:
    write_dev_certs(tmp_path / "one", roles=["robot-a"])
    write_dev_certs(tmp_path / "two", roles=["robot-a"])
    with pytest.raises(InvalidSignature):  # same CA name, another key
        load(tmp_path / "two" / "robot-a.pem").verify_directly_issued_by(
            load(tmp_path / "one" / "ca.pem")
        )


def test_keys_are_owner_only_and_match_their_certificates(tmp_path: Path) -> None:
    written = write_dev_certs(tmp_path, roles=["shard"])
    keys = [p for p in written if p.suffix == ".key"]
    assert {p.name for p in keys} == {"ca.key", "shard.key"}
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    files = TlsFiles.of_role(tmp_path, "shard")
    authority = Authority.load(tmp_path)  # the CA's key loads and is its certificate's
    assert authority.cert.public_key() == authority.key.public_key()
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert load(files.cert).public_key() == key.public_key()


def test_reissue_has_a_new_serial_from_the_same_ca(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, roles=["coordinator"])
    authority = Authority.load(tmp_path)
    first, second = issue(authority, "coordinator")[0], issue(authority, "coordinator")[0]
    assert first.serial_number != second.serial_number
    second.verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_extra_hosts_become_sans(tmp_path: Path) -> None:
    cert, _ = issue(Authority.load(_made(tmp_path)), "shard", ["10.0.0.7", "node-a.local"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert san.get_values_for_type(x509.DNSName) == ["node-a.local"]


def _made(folder: Path) -> Path:
    write_dev_certs(folder, roles=[])
    return folder


def test_a_second_run_refuses_to_replace_without_force(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, roles=["admin"])
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(CertsExist):
        write_dev_certs(tmp_path, roles=["admin"])
    assert (tmp_path / "ca.pem").read_bytes() == before
    write_dev_certs(tmp_path, roles=["admin"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before


def test_command_writes_the_layout_and_exits_1_when_it_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "dev", "--out", str(out), "--robots", "arm-1"]) == 0
    names = {p.name for p in out.iterdir()}
    for role in ("ca", "coordinator", "shard", "admin", "redis", "etcd", "arm-1"):
        assert {f"{role}.pem", f"{role}.key"} <= names, role
    capsys.readouterr()
    assert main(["certs", "dev", "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert main(["certs", "dev", "--out", str(out), "--force"]) == 0


def test_a_robot_name_that_cannot_name_a_file_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["certs", "dev", "--out", str(tmp_path), "--robots", "../evil"]) == 2
