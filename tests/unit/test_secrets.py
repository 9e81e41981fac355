"""Secrets from the mounted folder, not the command line: the Redis password joins the store
URL (never twice), the identities file is found there, and a coordinator with auth on but no
usable identities file refuses to start in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.coordinator.coordinator_process import session_access
from service.runtime import secrets
from service.runtime.settings import CoordinatorSettings
from state.redis_url import parse_cluster_url, parse_sentinel_url, redacted

pytestmark = pytest.mark.timeout(10)


def test_the_redis_password_file_joins_the_url_whatever_its_form(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("p@ss:w/rd\n")
    got = {
        url: secrets.store_url(url, tmp_path)
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://app@127.0.0.1:6379/0",
            "redis+sentinel://h1:26379,h2:26379/sessions/0",
            "redis+cluster://h1:7000,h2:7000",
        ]
    }
    assert got["redis://127.0.0.1:6379/0"] == "redis://:p%40ss%3Aw%2Frd@127.0.0.1:6379/0"
    assert got["redis://app@127.0.0.1:6379/0"].startswith("redis://app:p%40ss")
    for url in got.values():
        assert "p%40ss" in url and "p%40ss" not in redacted(url)
    assert parse_sentinel_url(got["redis+sentinel://h1:26379,h2:26379/sessions/0"]).password == (
        "p@ss:w/rd"
    )
    assert parse_cluster_url(got["redis+cluster://h1:7000,h2:7000"]).password == "p@ss:w/rd"


def test_no_folder_or_no_file_leaves_the_url_alone(tmp_path: Path) -> None:
    assert secrets.store_url("redis://h:1/0", None) == "redis://h:1/0"
    assert secrets.store_url("redis://h:1/0", tmp_path) == "redis://h:1/0"


def test_a_password_in_the_url_and_in_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("secret")
    with pytest.raises(SystemExit, match="keep only the file") as caught:
        secrets.store_url("redis://:other@h:1/0", tmp_path)
    assert "other" not in str(caught.value.code)


def test_an_empty_secret_is_a_mistake(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        secrets.store_url("redis://h:1/0", tmp_path)


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
