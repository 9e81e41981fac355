"""set_desired_version: a put etcd refuses for a moment is retried with the same value; one
it keeps refusing fails with the attempts named."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
from tenacity import wait_none

from state import desired_version, etcd_client
from state.leadership import LeadershipUnavailable


class FlakyEtcd:
    """Refuses the first `failures` puts, then takes them."""

    puts: ClassVar[list[tuple[str, bytes, int]]] = []
    failures: ClassVar[int] = 0

    def __init__(self, url: str, timeout_s: float, tls: object) -> None:
        pass

    def put(self, key: str, value: bytes, lease_id: int) -> None:
        FlakyEtcd.puts.append((key, value, lease_id))
        if len(FlakyEtcd.puts) <= FlakyEtcd.failures:
            raise etcd_client.EtcdUnavailable("put: connection refused")

    def close(self) -> None:
        pass


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> type[FlakyEtcd]:
    FlakyEtcd.puts = []
    monkeypatch.setattr(etcd_client, "EtcdConnection", FlakyEtcd)
    monkeypatch.setattr(desired_version, "PUT_WAIT", wait_none())
    return FlakyEtcd


def test_a_refused_put_is_retried_with_the_same_value(
    flaky: type[FlakyEtcd], caplog: pytest.LogCaptureFixture
) -> None:
    flaky.failures = desired_version.PUT_ATTEMPTS - 1
    with caplog.at_level(logging.WARNING):
        desired_version.set_desired_version("etcd://127.0.0.1:2379", "default", "v2")
    assert len(flaky.puts) == desired_version.PUT_ATTEMPTS
    assert len(set(flaky.puts)) == 1  # one value, written again
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == desired_version.PUT_ATTEMPTS - 1


def test_a_put_refused_every_time_fails_naming_the_attempts(flaky: type[FlakyEtcd]) -> None:
    flaky.failures = desired_version.PUT_ATTEMPTS
    with pytest.raises(LeadershipUnavailable, match=f"{desired_version.PUT_ATTEMPTS} attempts"):
        desired_version.set_desired_version("etcd://127.0.0.1:2379", "default", "v2")
    assert len(flaky.puts) == desired_version.PUT_ATTEMPTS
