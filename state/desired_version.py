"""Setting the model version a cluster should serve: what `ckpt promote` and `ckpt rollback`
tell the running cluster, so that shards and coordinators move to it at once."""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime
from urllib.parse import urlparse

from state.etcd_keys import desired_version_key, desired_version_value
from state.etcd_url import EtcdTls
from state.leadership import LeadershipUnavailable


def set_desired_version(
    url: str, cluster: str, version: str, timeout_s: float = 5.0, tls: EtcdTls | None = None
) -> None:
    """Write the desired version (no lease: it outlives every process)."""
    if urlparse(url).scheme != "etcd":
        raise ValueError(f"unsupported leadership URL {url!r}: use etcd://host:port[,host:port...]")
    from state.etcd_client import EtcdConnection, EtcdUnavailable

    etcd = EtcdConnection(url, timeout_s, tls)
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        etcd.put(
            desired_version_key(cluster),
            desired_version_value(version, by, datetime.now(UTC).isoformat()),
            0,
        )
    except EtcdUnavailable as exc:
        raise LeadershipUnavailable(f"etcd {url} did not take the desired version: {exc}") from exc
    finally:
        etcd.close()
