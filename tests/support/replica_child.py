"""One replica's etcd membership alone in a process, for tests that SIGKILL or SIGSTOP it.

Run: python -m tests.support.replica_child URL CLUSTER STAGE REPLICA_ID LEASE_TTL_S
Prints `role <role> <epoch>` (flushed) on every role change; stops cleanly (revoking its lease)
when its stdin closes, so it also goes away with the test that started it.
"""

from __future__ import annotations

import sys

from state.etcd_membership import EtcdReplicaMembership
from state.leadership import ReplicaInfo, Role


def main(argv: list[str]) -> None:
    url, cluster, stage, replica_id, lease_ttl_s = argv
    info = ReplicaInfo(int(stage), replica_id, f"{replica_id}.invalid:1", "v1")

    def report(role: Role) -> None:
        print(f"role {role.value} {membership.epoch}", flush=True)

    membership = EtcdReplicaMembership(
        url, cluster, info, float(lease_ttl_s), on_role_change=report
    )
    membership.start()
    sys.stdin.read()
    membership.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
