"""Setting the model version a cluster should serve: what `ckpt promote` and `ckpt rollback`
tell the running cluster, so that shards and coordinators move to it at once."""

from __future__ import annotations

import getpass
import logging
import socket
from datetime import UTC, datetime
from urllib.parse import urlparse

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from state.etcd_keys import desired_version_key, desired_version_value
from state.etcd_url import EtcdTls
from state.leadership import LeadershipUnavailable

_log = logging.getLogger(__name__)
# A put of the same value is idempotent: an etcd member restarting or a leader election
# (a second or two) should not fail an operator's promote. At most about 2 x timeout_s in all.
PUT_ATTEMPTS = 4
PUT_WAIT = wait_exponential_jitter(multiplier=0.25, max=2.0, jitter=0.25)


def set_desired_version(
    url: str, cluster: str, version: str, timeout_s: float = 5.0, tls: EtcdTls | None = None
) -> None:
    """Write the desired version (no lease: it outlives every process)."""
    if urlparse(url).scheme != "etcd":
        raise ValueError(f"unsupported leadership URL {url!r}: use etcd://host:port[,host:port...]")
    from state.etcd_client import EtcdConnection, EtcdUnavailable

    etcd = EtcdConnection(url, timeout_s, tls)
    key = desired_version_key(cluster)
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    value = desired_version_value(version, by, datetime.now(UTC).isoformat())
    retrying = Retrying(
        retry=retry_if_exception_type(EtcdUnavailable),
        stop=stop_after_attempt(PUT_ATTEMPTS) | stop_after_delay(2 * timeout_s),
        wait=PUT_WAIT,
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        retrying(etcd.put, key, value, 0)
    except EtcdUnavailable as exc:
        raise LeadershipUnavailable(
            f"etcd {url} did not take the desired version ({PUT_ATTEMPTS} attempts): {exc}"
        ) from exc
    finally:
        etcd.close()


def _log_retry(state: RetryCallState) -> None:
    """A CLI has no metrics endpoint: each retry is a warning line."""
    error = state.outcome.exception() if state.outcome else None
    _log.warning(
        "etcd did not take the desired version (attempt %d of %d, retrying): %s",
        state.attempt_number,
        PUT_ATTEMPTS,
        error,
    )
