"""The session store's credentials beyond its URL: the AUTH password from a secrets file, and
for rediss:// the CA and client certificate. Checked on the client redis-py builds (it
connects on first use, so no socket is opened here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from state.redis_connect import connect
from state.redis_url import RedisCredentials, read_secret

FILES = RedisCredentials(
    "s3cret", Path("/tls/ca.pem"), Path("/tls/coordinator.pem"), Path("/tls/coordinator.key")
)


def kwargs_of(url: str, credentials: RedisCredentials) -> dict[str, object]:
    client, _ = connect(url, 1.0, credentials)
    pool = client.connection_pool
    return {"class": pool.connection_class, **pool.connection_kwargs}


def test_rediss_url_uses_the_ca_and_client_certificate() -> None:
    got = kwargs_of("rediss://redis.example:6380/0", FILES)
    assert got["class"] is redis.SSLConnection
    assert got["ssl_ca_certs"] == "/tls/ca.pem"
    assert got["ssl_certfile"] == "/tls/coordinator.pem"
    assert got["ssl_keyfile"] == "/tls/coordinator.key"
    assert got["password"] == "s3cret"


def test_plain_url_takes_the_password_but_no_tls_files() -> None:
    got = kwargs_of("redis://127.0.0.1:6379/0", FILES)
    assert got["class"] is redis.Connection
    assert got["password"] == "s3cret"
    assert "ssl_ca_certs" not in got


def test_a_password_in_the_url_wins_over_the_file() -> None:
    assert kwargs_of("redis://:fromurl@127.0.0.1:6379/0", FILES)["password"] == "fromurl"


def test_credentials_never_print_the_password() -> None:
    assert "s3cret" not in repr(FILES) and "s3cret" not in str(FILES)


def test_secret_file_is_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "redis-password"
    path.write_text("pa ss\nignored\n")
    assert read_secret(path) == "pa ss"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_secret(path)
