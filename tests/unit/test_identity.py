"""Who a call comes from: the peer certificate's CN or SAN URI (as gRPC's auth context reports
it on a TLS channel) or a bearer token checked against the identities file; what each auth
mode accepts; and the errors that never quote a token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from service.runtime.identities_file import Identities, IdentitiesFile, token_entry, token_hash
from service.runtime.identity import (
    AuthMode,
    Identity,
    Scope,
    Unauthenticated,
    caller_identity,
)

pytestmark = pytest.mark.timeout(10)

ROBOT_TOKEN = "robot-token-0123456789"
OPS_TOKEN = "ops-token-0123456789"
FILE_TEXT = (
    token_entry("robot-7", frozenset({Scope.STEP}), token_hash(ROBOT_TOKEN))
    + token_entry("ops", frozenset({Scope.ADMIN, Scope.STEP}), token_hash(OPS_TOKEN))
    + '\n[[certificate]]\nidentity = "console"\nscopes = ["admin"]\n'
)


class FakeContext:
    """The two things caller_identity reads of a grpc.ServicerContext."""

    def __init__(
        self,
        auth: Mapping[str, Any] | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        self.auth = auth or {"transport_security_type": [b"insecure"]}
        self.metadata = metadata

    def auth_context(self) -> Mapping[str, Any]:
        return self.auth

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self.metadata


class Directory:
    def __init__(self) -> None:
        self.identities = Identities.parse(FILE_TEXT, "test")

    def by_token(self, token: str) -> Identity | None:
        return self.identities.tokens.get(token_hash(token))

    def certificate_identity(self, name: str) -> Identity:
        found = self.identities.certificates.get(name)
        return found or Identity(name, frozenset({Scope.STEP}), "certificate")


DIRECTORY = Directory()
TLS_PEER = {
    "transport_security_type": [b"ssl"],
    "x509_common_name": [b"robot-7"],
    "x509_subject_alternative_name": [b"robot-7.local", b"spiffe://actionmesh/robot/robot-7"],
}


def identify(context: FakeContext, mode: AuthMode) -> Identity | None:
    return caller_identity(context, mode, DIRECTORY)


def test_auth_off_names_nobody_whatever_comes_with_the_call() -> None:
    assert identify(FakeContext(TLS_PEER, [("authorization", "Bearer x")]), "off") is None


@pytest.mark.parametrize("mode", ["mtls", "any"])
def test_a_verified_client_certificate_names_its_cn(mode: AuthMode) -> None:
    found = identify(FakeContext(TLS_PEER), mode)
    assert found == Identity("robot-7", frozenset({Scope.STEP}), "certificate")


def test_without_a_cn_the_san_uri_names_the_caller() -> None:
    peer = {"x509_subject_alternative_name": [b"robot-7.local", b"spiffe://actionmesh/r/9"]}
    found = identify(FakeContext(peer), "mtls")
    assert found is not None and found.name == "spiffe://actionmesh/r/9"


def test_a_single_bytes_value_is_read_as_typeshed_declares_it() -> None:
    found = identify(FakeContext({"x509_common_name": b"robot-7"}), "mtls")
    assert found is not None and found.name == "robot-7"


def test_a_certificate_identity_listed_in_the_file_gets_its_scopes() -> None:
    found = identify(FakeContext({"x509_common_name": [b"console"]}), "mtls")
    assert found is not None and found.scopes == frozenset({Scope.ADMIN})


def test_mtls_mode_refuses_a_plaintext_call_even_with_a_good_token() -> None:
    context = FakeContext(metadata=[("authorization", f"Bearer {ROBOT_TOKEN}")])
    with pytest.raises(Unauthenticated, match="client certificate"):
        identify(context, "mtls")


@pytest.mark.parametrize("mode", ["token", "any"])
def test_a_known_bearer_token_names_its_identity(mode: AuthMode) -> None:
    context = FakeContext(metadata=[("authorization", f"Bearer {OPS_TOKEN}")])
    assert identify(context, mode) == Identity("ops", frozenset({Scope.ADMIN, Scope.STEP}), "token")


def test_the_bearer_scheme_is_case_insensitive() -> None:
    found = identify(FakeContext(metadata=[("authorization", f"bearer {ROBOT_TOKEN}")]), "token")
    assert found is not None and found.name == "robot-7"


def test_token_mode_ignores_the_certificate() -> None:
    with pytest.raises(Unauthenticated, match="Bearer"):
        identify(FakeContext(TLS_PEER), "token")


def test_any_mode_prefers_the_certificate_over_a_token() -> None:
    context = FakeContext(TLS_PEER, [("authorization", f"Bearer {OPS_TOKEN}")])
    found = identify(context, "any")
    assert found is not None and (found.name, found.via) == ("robot-7", "certificate")


@pytest.mark.parametrize(
    "metadata",
    [[], [("authorization", "Basic abc")], [("authorization", "Bearer ")], [("x-other", "1")]],
)
def test_no_usable_credential_is_unauthenticated(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthenticated, match="none came with the call"):
        identify(FakeContext(metadata=metadata), "token")


def test_an_unknown_token_is_unauthenticated_and_never_quoted_whole() -> None:
    wrong = "not-a-real-token-but-long-enough-to-matter"
    with pytest.raises(Unauthenticated) as caught:
        identify(FakeContext(metadata=[("authorization", f"Bearer {wrong}")]), "token")
    assert wrong not in str(caught.value) and wrong[:6] in str(caught.value)


def test_mtls_without_an_identities_file_gives_certificates_the_default_scopes() -> None:
    directory = IdentitiesFile(None, frozenset({Scope.STEP}))
    found = caller_identity(FakeContext(TLS_PEER), "mtls", directory)
    assert found == Identity("robot-7", frozenset({Scope.STEP}), "certificate")
    assert directory.by_token(ROBOT_TOKEN) is None


def test_ownership_an_admin_may_use_any_session_a_step_identity_only_its_own() -> None:
    robot = Identity("robot-7", frozenset({Scope.STEP}), "token")
    admin = Identity("ops", frozenset({Scope.ADMIN}), "token")
    assert robot.may_use("robot-7") and not robot.may_use("robot-8") and not robot.may_use("")
    assert admin.may_use("robot-8") and admin.may_use("")
