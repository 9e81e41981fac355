"""A full disk where a shard keeps its flash copy (issue 13): both replicas of stage 1 keep
their flash on a small tmpfs of their own, filled up once they serve v1; then the operator
promotes v2 under load. Real shards, coordinator, etcd, Redis and a file:// checkpoint store.

And a shard with nothing good on a full flash exits with one line saying so. Needs root
(mount -t tmpfs); skipped with the reason when mounting is not permitted."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from chaos.faults import run_ckpt as ckpt
from chaos.fleet import Robot
from chaos.invariants import failed, failure_report, progress, robots_stepping
from checkpoint.local_flash import INCOMING_PREFIX, LocalFlash
from service.local.local_checkpoints import LocalCheckpoints
from service.local.local_cluster import LocalCluster
from service.model import weights
from service.model.action_model import ActionModel
from service.proto import session_pb2
from state.etcd_routing import EtcdRoutingTable
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.integration.test_rolling_update import ROBOT_PERIOD_S, pipeline_on, serving
from tests.support.scraping import metric
from tests.support.waiting import wait_for

FULL_STAGE = 1
REPLICAS = ("stage-1-r0", "stage-1-r1")
PAGE = 4096


def version_bytes(weights_dir: Path) -> int:
    """What one version takes on flash: its files rounded up to pages, plus its manifest."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in weights_dir.iterdir()) + PAGE


@contextmanager
def tmpfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted on `directory`, always unmounted on the way out (lazily:
    a shard that is still stopping may hold it)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the flash (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * PAGE)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def on_flash(directory: Path) -> tuple[list[str], str | None, list[str]]:
    """The complete versions, CURRENT and the temp dirs on a shard's flash."""
    flash = LocalFlash(directory, create=False, insecure=True)
    temps = [p.name for p in flash.versions_dir.iterdir() if p.name.startswith(INCOMING_PREFIX)]
    return flash.versions(), flash.current(), temps


def answered_full_on(robots: list[Robot], version: str) -> bool:
    """Every attempt so far was answered, FULL, on `version`."""
    return all(
        o.code == "OK"
        and o.model_version == version
        and o.serve_mode == session_pb2.SERVE_MODE_FULL
        for robot in robots
        for o in robot.outcomes
    )


def replica_version(table: EtcdRoutingTable, replica_id: str) -> str | None:
    view = table.snapshot().get(FULL_STAGE)
    replica = view.replicas.get(replica_id) if view else None
    return replica.model_version if replica else None


def says_no_space(cluster: LocalCluster, replica: str, flash_dir: Path, version: str) -> None:
    """`replica` counts a failed reload and logs why: no space on its flash for `version`."""
    shard = cluster.replica_process(replica)
    wait_for(
        lambda: (
            (
                metric(
                    shard.ports["metrics_port"],
                    "actionmesh_shard_reloads_total",
                    stage=str(FULL_STAGE),
                    outcome="failed",
                )
                or 0
            )
            >= 1
        ),
        60,
        f"{replica} counts a failed reload",
    )

    # The count goes up just before the line is logged (and written, by the log thread).
    def says_why() -> bool:
        said = [ln for ln in shard.log_path.read_text().splitlines() if "no space" in ln.lower()]
        return any(str(flash_dir) in ln and version in ln for ln in said)

    wait_for(says_why, 10, f"{replica} logs no space on {flash_dir} for {version}")


def test_a_full_flash_keeps_the_old_version_cleans_up_and_loads_the_new_once_freed(
    tmp_path: Path,
) -> None:
    new = ActionModel(SMALL_MODEL.model_copy(update={"seed": 1}))
    weights.save(new, tmp_path / "weights-v2")
    one_version = version_bytes(tmp_path / "weights-v2")
    work_dir = tmp_path / "cluster"
    flash_dirs = {r: work_dir / "flash" / r for r in REPLICAS}
    with ExitStack() as stack:
        for directory in flash_dirs.values():  # room for two versions and a little
            stack.enter_context(tmpfs(directory, 2 * one_version + 16 * PAGE))
        cluster = stack.enter_context(
            LocalCluster(  # a log as long as the test: the switch to v2 replays it all
                cluster_settings(work_dir, replicas=2),
                SMALL_MODEL,
                coordinator_overrides={"observation_log_depth": 1000},
            )
        )
        assert cluster.checkpoints is not None
        old_model, old = weights.load_model(cluster.weights_dir)
        v1 = old.version
        v2 = cluster.checkpoints.publish(tmp_path / "weights-v2", promote=False)
        table = EtcdRoutingTable(cluster.etcd_url, cluster.settings.cluster)
        table.start()
        stack.callback(table.stop)
        assert pipeline_on(table, v1)
        fillers = [fill(d) for d in flash_dirs.values()]
        full = {r: free_bytes(d) for r, d in flash_dirs.items()}
        print(f"one version {one_version} bytes; free after filling {full}")
        assert all(free < one_version for free in full.values())

        robots = stack.enter_context(
            # degraded: once freed, the move to v2 may answer labelled degraded steps while
            # the long history is replayed (a rolling update's, not the full disk's doing)
            robots_stepping(
                cluster, period_s=ROBOT_PERIOD_S, models={v1: old_model, v2: new}, degraded=True
            )
        )
        progress(robots, 3)
        promoted = ckpt(cluster, "promote", v2)
        assert (promoted["current"], promoted["cluster"]) == (v2, True)

        # 1. The standby of stage 1 tries v2 at once (its leader waits for it): it says so (a
        # log line naming its flash and "no space", the failed-reload counter), keeps running,
        # and the stage, so the whole pipeline, stays on v1.
        view = table.snapshot()[FULL_STAGE]
        assert view.leader is not None
        leader = view.leader.replica_id
        standby = next(r for r in REPLICAS if r != leader)
        says_no_space(cluster, standby, flash_dirs[standby], v2)
        progress(robots, 5)
        assert answered_full_on(robots, v1)
        assert all(cluster.replica_process(r).returncode() is None for r in REPLICAS)

        # 2. Nothing half-written: v1 alone, CURRENT on it, no temp dir, no space taken.
        for replica, directory in flash_dirs.items():
            assert on_flash(directory) == ([v1], v1, [])
            assert free_bytes(directory) == full[replica]

        # 4. The leader restarts on its full flash: it serves v1 at once (the standby leads
        # meanwhile), and, a standby now, fails to fit v2 like the other.
        cluster.restart_replica(leader)
        log_path = cluster.replica_process(leader).log_path
        wait_for(lambda: "serving it at once" in log_path.read_text(), 10, "serving it at once")
        wait_for(lambda: replica_version(table, leader) == v1, 60, "restarted shard on v1")
        says_no_space(cluster, leader, flash_dirs[leader], v2)
        progress(robots, 5)
        assert answered_full_on(robots, v1)
        assert on_flash(flash_dirs[leader]) == ([v1], v1, [])

        # 3. Space freed: each shard retries on its own (backoff) and the rollout completes.
        for filler in fillers:
            filler.unlink()
        wait_for(lambda: pipeline_on(table, v2), 180, "every replica and leader on v2")
        wait_for(lambda: serving(robots, v2), 60, f"every session moves to {v2}")
        progress(robots, 3)
        for replica in REPLICAS:
            port = cluster.replica_process(replica).ports["metrics_port"]
            stage = str(FULL_STAGE)
            assert (metric(port, "actionmesh_shard_reload_retries_total", stage=stage) or 0) >= 1
            assert metric(port, "actionmesh_shard_reloads_total", stage=stage, outcome="loaded")
            assert on_flash(flash_dirs[replica]) == ([v1, v2], v2, [])
    assert failed(robots) == [], failure_report(robots, cluster.log_dir)


def test_a_shard_with_nothing_on_a_full_flash_exits_saying_no_space(tmp_path: Path) -> None:
    """Nothing good on flash and no room to pull the remote CURRENT: the shard exits with one
    line naming its flash (before the fix: an OSError traceback)."""
    weights.save(ActionModel(SMALL_MODEL), tmp_path / "weights")
    checkpoints = LocalCheckpoints(tmp_path / "checkpoints")
    checkpoints.publish(tmp_path / "weights", promote=True)
    with tmpfs(tmp_path / "flash", 16 * PAGE) as flash_dir:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "shard",
                "--stage",
                "0",
                "--port",
                "0",
                "--flash-dir",
                str(flash_dir),
                "--remote",
                checkpoints.remote_url,
                "--trusted-keys",
                str(checkpoints.public_key),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0
        assert f"no space on local flash {flash_dir}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert on_flash(flash_dir) == ([], None, [])
