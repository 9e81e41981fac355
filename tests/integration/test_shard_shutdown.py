"""A cluster's end, as LocalCluster.stop and a chaos run do it: the coordinators stopped, then
every shard (two replicas per stage, on a real etcd) sent SIGTERM at once, a few rounds. Each
shard exits cleanly within drain_delay_s + shutdown_grace_s + STOP_MARGIN_S, and no stopping
replica becomes its stage's leader when the other one releases the key; also when the kernel
hands the signal to another thread than the main one (it may: docs/chaos.md)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import pytest

from service.local.child_process import ChildProcess
from service.local.local_cluster import LocalCluster
from service.runtime.grpc_server import STOP_MARGIN_S
from service.runtime.settings import ShardSettings
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_health import ready_status
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

# How each round delivers SIGTERM: to the process (the kernel picks a thread, the main one
# unless it is busy) or straight to a thread other than the main one.
DELIVERIES = ("process", "other-thread", "process")
# What a shard promises, plus time to see the exit from here on a loaded machine.
BOUND_S = (
    float(ShardSettings.model_fields["drain_delay_s"].default)
    + float(ShardSettings.model_fields["shutdown_grace_s"].default)
    + STOP_MARGIN_S
    + 1.0
)


def sigterm(shard: ChildProcess, delivery: str) -> None:
    if delivery == "process":
        shard.terminate()
        return
    pid = shard.pid
    other = max(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, other, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill {pid}/{other}")


def log_since(path: Path, offset: int) -> list[str]:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def leader_after_stopping(lines: list[str]) -> list[str]:
    """The `became leader` lines logged after the shard began to stop."""
    stopping = next((i for i, line in enumerate(lines) if "draining" in line), len(lines))
    return [line for line in lines[stopping:] if "became leader" in line]


def test_every_shard_stops_in_bounds_and_none_takes_leadership_while_stopping(
    tmp_path: Path,
) -> None:
    with LocalCluster(cluster_settings(tmp_path, replicas=2), model=SMALL_MODEL) as cluster:
        for coordinator in cluster.coordinators:
            coordinator.stop()
        for round_, delivery in enumerate(DELIVERIES):
            if round_:
                cluster.shards = [
                    cluster.start_shard(stage, replica)
                    for stage in range(SMALL_MODEL.n_stages)
                    for replica in range(2)
                ]
                for shard in cluster.shards:
                    shard.wait_ready(60)
            for shard in cluster.shards:
                port = shard.ports["metrics_port"]
                wait_for(lambda p=port: ready_status(p) == 200, 30, f"{shard.name} ready")
            offsets = {s.name: s.log_path.stat().st_size for s in cluster.shards}
            start = time.monotonic()
            for shard in cluster.shards:
                sigterm(shard, delivery)
            exits: dict[str, float] = {}
            while len(exits) < len(cluster.shards) and time.monotonic() - start < BOUND_S + 5:
                for shard in cluster.shards:
                    if shard.name not in exits and shard.returncode() is not None:
                        exits[shard.name] = time.monotonic() - start
                time.sleep(0.02)
            print(f"round {round_} ({delivery}): exits after", exits)
            late = {s.name for s in cluster.shards if exits.get(s.name, BOUND_S + 1) > BOUND_S}
            assert not late, f"{delivery}: {late} not gone within {BOUND_S:.1f}s: {exits}"
            assert {s.name: s.returncode() for s in cluster.shards} == {
                s.name: 0 for s in cluster.shards
            }, "a shard was ended by its stop limit, not a clean stop"
            led = {
                s.name: found
                for s in cluster.shards
                if (found := leader_after_stopping(log_since(s.log_path, offsets[s.name])))
            }
            assert led == {}, f"{delivery}: became leader while stopping"
