"""Secrets from the mounted folder, not the command line: the Redis password file is found
there unless --redis-password-file names one, the identities file too, and a coordinator with
auth on but no usable identities file refuses to start in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.coordinator.coordinator_process import redis_credentials, session_access
from service.runtime import secrets
from service.runtime.settings import CoordinatorSettings

pytestmark = pytest.mark.timeout(10)


def test_the_redis_password_comes_from_its_flag_else_the_secrets_folder(tmp_path: Path) -> None:
    flagged = tmp_path / "elsewhere"
    assert secrets.redis_password_path(None, None) is None
    assert secrets.redis_password_path(None, tmp_path) is None  # a folder without the file
    (tmp_path / "redis-password").write_text("p@ss:w/rd\n")
    assert secrets.redis_password_path(None, tmp_path) == tmp_path / "redis-password"
    assert secrets.redis_password_path(flagged, tmp_path) == flagged


def test_the_coordinator_reads_the_folder_password_and_an_empty_one_stops_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "redis-password").write_text("p@ss:w/rd\n")
    credentials = redis_credentials(coordinator(secrets_dir=tmp_path))
    assert credentials.password == "p@ss:w/rd" and "p@ss" not in repr(credentials)
    (tmp_path / "redis-password").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        redis_credentials(coordinator(secrets_dir=tmp_path))


def coordinator(**values: object) -> CoordinatorSettings:
    return CoordinatorSettings.model_validate({"stage_addresses": ["127.0.0.1:1"], **values})


def test_auth_token_needs_an_identities_file_and_finds_it_in_the_secrets_folder(
    tmp_path: Path,
) -> None:
    with pytest.raises(SystemExit, match="needs --identities-file"):
        session_access(coordinator(auth="token"))
    (tmp_path / "identities.toml").write_text("")
    access = session_access(coordinator(auth="token", secrets_dir=tmp_path))
    assert access.mode == "token"
    assert session_access(coordinator(auth="mtls")).mode == "mtls"  # certificates need no file
    assert session_access(coordinator()).mode == "off"


def test_a_broken_identities_file_stops_the_coordinator_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ids.toml"
    path.write_text("[[token]]\nidentity = 'r'\n")
    with pytest.raises(SystemExit) as caught:
        session_access(coordinator(auth="any", identities_file=path))
    message = str(caught.value.code)
    assert message.startswith("coordinator: ") and "\n" not in message and "sha256" in message


def test_max_concurrent_rpcs_past_the_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="--max-concurrent-rpcs 65 must be at most"):
        coordinator(max_concurrent_rpcs=65)
    assert coordinator().concurrent_rpcs() == 64
    assert coordinator(max_concurrent_rpcs=8).concurrent_rpcs() == 8
