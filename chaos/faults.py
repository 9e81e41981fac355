"""Fault injection on a running chaos cluster: each fault of chaos/schedule.py as a function
that breaks one part, holds the fault, undoes it (restart, SIGCONT, rollback) and says what
it did. Also the probes the integration tests share (who leads a stage, the ckpt CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.chaos_cluster import ChaosCluster
from chaos.delay_proxy import DelayProxy
from chaos.hosts import MAIN, host_of
from chaos.record import FaultWindow
from chaos.schedule import FaultEvent
from service.local import nft
from service.local.child_process import ChildProcess
from service.local.local_cluster import LocalCluster
from state.backends import open_routing_table
from state.leadership import ReplicaInfo

PROMOTION_TIMEOUT_S = 30.0


def stage_leader(cluster: LocalCluster, stage: int) -> ReplicaInfo | None:
    """The replica etcd names leader of `stage` now (None: no leader)."""
    table = open_routing_table(cluster.etcd_url, cluster.settings.cluster)
    table.start()
    try:
        return table.snapshot()[stage].leader
    finally:
        table.stop()


def run_ckpt(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    """`actionmesh ckpt ARGS --json` against the cluster's checkpoint store and etcd, as an
    operator's script runs it; its JSON output. RuntimeError (with its output) if it fails."""
    assert cluster.checkpoints is not None
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "ckpt",
        *args,
        "--flash-dir",
        str(cluster.checkpoints.flash.root),
        "--remote",
        cluster.checkpoints.remote_url,
        "--trusted-keys",
        str(cluster.checkpoints.public_key),
        "--etcd",
        cluster.etcd_url,
        "--cluster",
        cluster.settings.cluster,
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(args)} failed: {result.stdout}{result.stderr}")
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@dataclass
class FaultContext:
    """What an injector needs beyond the cluster: the run's clock (seconds since the robots
    started), the address the robots use now, the version a rolling update goes to, and the
    proxies the robots reach the coordinators through (by the proxy's address), if any."""

    cluster: ChaosCluster
    clock: Callable[[], float]
    robots_coordinator: Callable[[], str]
    update_version: str = ""
    proxies: dict[str, DelayProxy] = field(default_factory=dict)


class FaultFailed(Exception):
    """Injecting or undoing a fault did not work; the message says what."""


def inject(ctx: FaultContext, event: FaultEvent) -> FaultWindow:
    """Inject `event`, hold it, undo it; its window (ok=False with the reason if it failed)."""
    start = ctx.clock()
    target = "?"
    try:
        target, detail = _INJECTORS[event.fault](ctx, event)
    except Exception as exc:  # recorded: the verdict faults-injected fails with the reason
        return FaultWindow(
            event.fault, target, start, ctx.clock(), f"{type(exc).__name__}: {exc}", False
        )
    return FaultWindow(event.fault, target, start, ctx.clock(), detail)


def _leader_process(ctx: FaultContext, event: FaultEvent) -> tuple[str, ChildProcess]:
    local = ctx.cluster.cluster
    stage = event.pick % local.model.n_stages
    leader = stage_leader(local, stage)
    if leader is None:
        raise FaultFailed(f"stage {stage} has no leader")
    return leader.replica_id, local.replica_process(leader.replica_id)


def kill_leader(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    replica_id, process = _leader_process(ctx, event)
    process.kill()
    time.sleep(event.hold_s)
    started = time.monotonic()
    ctx.cluster.cluster.restart_replica(replica_id)
    return (
        replica_id,
        f"kill -9, restarted after {event.hold_s:.1f}s, ready in {time.monotonic() - started:.1f}s",
    )


def pause_leader(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    replica_id, process = _leader_process(ctx, event)
    process.signal(signal.SIGSTOP)
    try:
        time.sleep(event.hold_s)
    finally:
        process.signal(signal.SIGCONT)
    return replica_id, f"SIGSTOP for {event.hold_s:.1f}s, then SIGCONT"


def kill_coordinator(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    local = ctx.cluster.cluster
    address = ctx.robots_coordinator()
    if address in ctx.proxies:
        address = ctx.proxies[address].target
    port = int(address.rsplit(":", 1)[1])
    child = next((c for c in local.coordinators if c.ports.get("grpc_port") == port), None)
    if child is None:
        raise FaultFailed(f"no coordinator of this cluster listens on {address}")
    child.kill()
    time.sleep(event.hold_s)
    local.restart_coordinator(child)
    return f"{child.name} ({address})", f"kill -9, restarted after {event.hold_s:.1f}s"


def kill_redis_primary(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    cluster = ctx.cluster
    primary = cluster.redis_primary()
    if primary is None or cluster.sentinels is None:
        raise FaultFailed("the Sentinels name no primary of this cluster")
    killed = time.monotonic()
    primary.kill()
    deadline = killed + PROMOTION_TIMEOUT_S
    while (now := cluster.redis_primary()) in (None, primary):
        if time.monotonic() > deadline:
            raise FaultFailed(f"no replica promoted within {PROMOTION_TIMEOUT_S}s")
        time.sleep(0.1)
    promoted_in = time.monotonic() - killed
    time.sleep(max(0.0, event.hold_s - promoted_in))
    primary.restart()  # back as a replica: the Sentinels re-point it at the new primary
    assert now is not None
    return (
        f"redis port {primary.port}",
        f"kill -9; Sentinel promoted port {now.port} after {promoted_in:.1f}s; old primary "
        "restarted as a replica",
    )


def kill_etcd_member(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    assert ctx.cluster.etcd is not None
    leader = ctx.cluster.etcd.leader_member()
    others = [m for m in ctx.cluster.etcd_members() if m is not leader]
    member = others[event.pick % len(others)]
    member.kill()
    time.sleep(event.hold_s)
    member.restart()
    return member.name, f"kill -9 (not the leader), restarted after {event.hold_s:.1f}s"


def kill_etcd_leader(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    assert ctx.cluster.etcd is not None
    leader = ctx.cluster.etcd.leader_member()
    leader.kill()
    time.sleep(event.hold_s)
    leader.restart()
    return leader.name, f"kill -9 of the raft leader, restarted after {event.hold_s:.1f}s"


def etcd_quorum_loss(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    members = ctx.cluster.etcd_members()
    survivor = members[event.pick % len(members)]
    lost = [m for m in members if m is not survivor]
    for member in lost:
        member.kill()
    time.sleep(event.hold_s)
    for member in lost:
        member.restart()
    names = ", ".join(m.name for m in lost)
    return names, f"kill -9 of {names} (quorum lost) for {event.hold_s:.1f}s, then restarted"


def corrupt_checkpoint(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    """Flip bytes in the middle of a weights file of the version a shard serves from its
    flash, then restart the shard: it must quarantine that version and load a good copy."""
    local = ctx.cluster.cluster
    n_stages, replicas = local.model.n_stages, local.settings.replicas
    stage, replica = event.pick % n_stages, (event.pick // n_stages) % replicas
    replica_id = f"stage-{stage}-r{replica}"
    flash = local.work_dir / "flash" / replica_id
    current = (flash / "CURRENT").read_text().strip()
    files = sorted((flash / "versions" / current).glob("*.safetensors"))
    if not files:
        raise FaultFailed(f"no weights file under {flash / 'versions' / current}")
    victim = files[event.pick % len(files)]
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(data))
    local.restart_replica(replica_id)
    quarantined = sorted(p.name for p in (flash / "quarantine").iterdir())
    if not quarantined:
        raise FaultFailed(f"{replica_id} restarted without quarantining the corrupt {victim.name}")
    return replica_id, f"corrupted {victim.name} of {current}; restarted, quarantined {quarantined}"


def rolling_update(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    if not ctx.update_version:
        raise FaultFailed("no second version was published for the rolling update")
    local = ctx.cluster.cluster
    promoted = run_ckpt(local, "promote", ctx.update_version)
    time.sleep(event.hold_s)
    rolled = run_ckpt(local, "rollback")
    return (
        "model version",
        f"promoted {promoted.get('current')}, rolled back to {rolled.get('current')} after "
        f"{event.hold_s:.1f}s",
    )


def slow_link(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    address = ctx.robots_coordinator()
    proxy = ctx.proxies.get(address)
    if proxy is None:
        raise FaultFailed(f"the robots reach {address} directly, through no proxy")
    proxy.delay_s = 0.15 + (event.pick % 301) / 1000
    try:
        time.sleep(event.hold_s)
    finally:
        delay, proxy.delay_s = proxy.delay_s, 0.0
    return (
        f"robots -> {proxy.target}",
        f"every chunk held {delay * 1e3:.0f} ms for {event.hold_s:.1f}s",
    )


# The table a partition adds to a host's namespace, and deletes to heal it.
PARTITION_TABLE = "actionmesh_partition"


def _partition(ctx: FaultContext, host: str, drop: list[str], hold_s: float) -> None:
    """Drop, in host `host`'s namespace, the packets that match any of `drop` (nft match
    expressions, each given once for the way out and once, mirrored, for the way in) for
    `hold_s`, then delete the table: the link is whole again."""
    hosts = ctx.cluster.hosts
    if hosts is None:
        raise FaultFailed("a partition needs the cluster on hosts (network namespaces)")
    way_in = [rule.replace("daddr", "saddr").replace("dport", "sport") for rule in drop]
    nft.apply(hosts, host, nft.drop_table(PARTITION_TABLE, drop, way_in))
    try:
        time.sleep(hold_s)
    finally:
        nft.apply(hosts, host, f"delete table inet {PARTITION_TABLE}\n")


def partition_shard(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    """Cut a stage leader's host off from every coordinator's host; it still reaches etcd
    (it keeps its lease) and S3."""
    hosts = ctx.cluster.hosts
    if hosts is None:
        raise FaultFailed("a partition needs the cluster on hosts (network namespaces)")
    replica_id, process = _leader_process(ctx, event)
    coordinators = sorted(hosts.address[host_of(c.name)] for c in ctx.cluster.cluster.coordinators)
    host = host_of(process.name)
    _partition(ctx, host, [f"ip daddr {{ {', '.join(coordinators)} }}"], event.hold_s)
    return (
        f"{replica_id} ({hosts.address[host]})",
        f"dropped every packet to and from the coordinators {', '.join(coordinators)} for "
        f"{event.hold_s:.1f}s",
    )


def partition_redis(ctx: FaultContext, event: FaultEvent) -> tuple[str, str]:
    """Cut the coordinator most robots use off from every Redis server and Sentinel (their
    ports on host MAIN); it still reaches etcd, the shards and the robots."""
    cluster, hosts = ctx.cluster, ctx.cluster.hosts
    if hosts is None or cluster.sentinels is None:
        raise FaultFailed("a partition needs the cluster on hosts, with its Sentinels")
    address = ctx.robots_coordinator()
    child = next(
        (c for c in cluster.cluster.coordinators if cluster.cluster.address_of(c) == address), None
    )
    if child is None:
        raise FaultFailed(f"no coordinator of this cluster listens on {address}")
    ports = sorted([r.port for r in cluster.redis] + cluster.sentinels.ports)
    main = hosts.address[MAIN]
    rule = f"ip daddr {main} tcp dport {{ {', '.join(map(str, ports))} }}"
    _partition(ctx, host_of(child.name), [rule], event.hold_s)
    return (
        f"{child.name} ({address})",
        f"dropped every packet between it and Redis/Sentinel ports {ports} on {main} for "
        f"{event.hold_s:.1f}s",
    )


_INJECTORS: dict[str, Callable[[FaultContext, FaultEvent], tuple[str, str]]] = {
    "kill-leader": kill_leader,
    "pause-leader": pause_leader,
    "kill-coordinator": kill_coordinator,
    "kill-redis-primary": kill_redis_primary,
    "kill-etcd-member": kill_etcd_member,
    "kill-etcd-leader": kill_etcd_leader,
    "etcd-quorum-loss": etcd_quorum_loss,
    "corrupt-checkpoint": corrupt_checkpoint,
    "rolling-update": rolling_update,
    "slow-link": slow_link,
    "partition-shard": partition_shard,
    "partition-redis": partition_redis,
}
