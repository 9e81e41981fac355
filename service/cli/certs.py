"""`actionmesh certs dev`: a throwaway CA and a certificate per role, for local TLS clusters."""

from __future__ import annotations

import sys

from service.local.dev_certs import CLUSTER_ROLES, CertsExist, write_dev_certs
from service.local.dev_certs import LOOPBACK_HOSTS as LOOPBACK
from service.runtime.command_settings import CertsSettings


def main(settings: CertsSettings, action: str) -> int:
    """Write the certificates; 1 (with one line on stderr) when --out already holds some."""
    assert action == "dev", action  # argparse allows no other
    roles = [*CLUSTER_ROLES, *settings.robots]
    try:
        written = write_dev_certs(
            settings.out, roles, [*LOOPBACK, *settings.hosts], force=settings.force
        )
    except CertsExist as exc:
        print(f"actionmesh certs dev: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"actionmesh certs dev: cannot write {settings.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote a throwaway CA and {len(roles)} certificates to {settings.out}:")
    for path in written:
        print(f"  {path}")
    print(
        f"servers: --tls-dir {settings.out}; robots: ca.pem with robot-*.pem and robot-*.key "
        "(never use these outside a test: ca.key sits beside them)"
    )
    return 0
