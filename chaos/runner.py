"""One chaos run: bring the cluster up, step the robots, inject the schedule's faults, then
record, replay the reference offline, check the invariants and write the report."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from actionmesh_client.session_client import Priority
from chaos.chaos_cluster import ChaosCluster, alive
from chaos.delay_proxy import DelayProxy
from chaos.faults import FaultContext, inject
from chaos.fleet import ClientRobot
from chaos.hosts import SMALL_MODEL
from chaos.leaders import LeaderWatch
from chaos.record import MODES, RobotEnd, RunRecord, StepRecord
from chaos.reference import observations, reference_with_exits_batch
from chaos.schedule import PARTITIONS, PROXIED, FaultEvent, schedule
from service.client import ActionMeshClient
from service.local.netns import HostMap
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig

log = logging.getLogger(__name__)

# Seconds between the end of one fault and the next one's injection, at least.
SETTLE_S = 3.0
# robot -> seq -> the action it was answered
Actions = dict[int, dict[int, torch.Tensor]]


@dataclass(frozen=True)
class RunOptions:
    scenario: str
    duration_s: float
    seed: int = 0
    robots: int = 4
    rate_hz: float = 50.0
    every_s: float = 10.0
    step_timeout_s: float = 0.5
    wait_replicas: int = 1
    replicas: int = 2
    coordinators: int = 2
    lease_ttl_s: float = 2.0
    redis_durability: str = "everysec"
    model: ModelConfig = field(default_factory=lambda: SMALL_MODEL)
    work_dir: Path | None = None
    start_timeout_s: float = 120.0
    progress: bool = True
    # The hosts of chaos_cluster.host_names, this process running in MAIN (the partitions).
    hosts: HostMap | None = None


def run(options: RunOptions) -> RunRecord:
    """The record of one run (the verdicts are computed from it by chaos.verdicts)."""
    events = schedule(options.scenario, options.duration_s, options.seed, options.every_s)
    if options.hosts is None and {e.fault for e in events} & set(PARTITIONS):
        raise ValueError(f"{options.scenario} needs the cluster on hosts (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="actionmesh-chaos-") as tmp:
        work = options.work_dir or Path(tmp)
        update_dir = work / "weights-update"
        update_model = ActionModel(
            options.model.model_copy(update={"seed": options.model.seed + 1})
        )
        weights.save(update_model, update_dir)
        seen: dict[int, str] = {}
        cluster = ChaosCluster(
            work,
            options.model,
            replicas=options.replicas,
            coordinators=options.coordinators,
            lease_ttl_s=options.lease_ttl_s,
            redis_durability=options.redis_durability,
            start_timeout_s=options.start_timeout_s,
            hosts=options.hosts,
        )
        log.info("starting the chaos cluster in %s", work)
        with cluster:
            local = cluster.cluster
            assert local.checkpoints is not None
            update_version = local.checkpoints.publish(update_dir, promote=False)
            model, info = weights.load_model(local.weights_dir)
            models = {info.version: model, update_version: update_model}
            seen.update(cluster.pids())
            record, actions = _drive(options, cluster, events, update_version, seen)
        record.leftover_processes = sorted(
            f"{name} (pid {pid})" for pid, name in seen.items() if alive(pid)
        )
    _compare_with_reference(record, options, models, actions)
    return record


def _observations(options: RunOptions, robot: int) -> list[torch.Tensor]:
    steps = int(options.duration_s * options.rate_hz * 1.5) + 100
    return observations(options.seed * 1000 + robot, steps, options.model.observation_dim)


def _drive(
    options: RunOptions,
    cluster: ChaosCluster,
    events: list[FaultEvent],
    update_version: str,
    seen: dict[int, str],
) -> tuple[RunRecord, Actions]:
    """Step the robots for the run's duration while the faults are injected; the record and
    every acknowledged action (kept out of the record for its size)."""
    coordinators = cluster.cluster.addresses
    proxies = [DelayProxy(a) for a in coordinators] if options.scenario in PROXIED else []
    addresses = [p.address for p in proxies] or coordinators
    # Every other robot asks for wait_replicas (the durability level) and streams: a run
    # shows what each level and each way of stepping costs.
    wait_replicas = [options.wait_replicas if i % 2 == 0 else 0 for i in range(options.robots)]
    fleet = _fleet(options, addresses, wait_replicas)
    record = RunRecord(
        options.scenario,
        options.seed,
        options.duration_s,
        options.robots,
        options.rate_hz,
        options.step_timeout_s,
        schedule=[e.to_json() for e in events],
    )
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    def robots_coordinator() -> str:
        current = [r.client.current_address for r in fleet]
        return max(set(current), key=current.count)

    ctx = FaultContext(
        cluster, clock, robots_coordinator, update_version, {p.address: p for p in proxies}
    )
    injector = threading.Thread(
        target=_inject_all, args=(ctx, events, record, cluster, seen), daemon=True
    )
    watch = LeaderWatch(cluster.cluster.etcd_url, cluster.cluster.settings.cluster, clock)
    watch.start()
    for robot in fleet:
        robot.start()
    injector.start()
    with tqdm(
        total=round(options.duration_s),
        desc=f"chaos {options.scenario}",
        unit="s",
        disable=not options.progress,
    ) as bar:
        while (now := clock()) < options.duration_s:
            time.sleep(min(1.0, options.duration_s - now))
            bar.update(round(clock()) - bar.n)
    injector.join()  # a fault still held ends (restart, rollback) before the robots stop
    for robot in fleet:
        robot.stop()
    for robot in fleet:
        robot.join(timeout=30)
    watch.stop()
    watch.join(timeout=10)
    record.leaders, record.leader_polls = watch.samples, watch.polls
    log.info("leader watch: %d polls, %d samples kept", watch.polls, len(watch.samples))
    record.steps.extend(_step_records(fleet, t0))
    for proxy in proxies:
        proxy.close()
    record.ends = _ends(fleet, wait_replicas, coordinators)
    actions: Actions = {}
    for index, robot in enumerate(fleet):
        actions[index] = {
            o.seq: o.action for o in robot.outcomes if o.code == "OK" and o.action is not None
        }
        if robot.is_alive():
            record.ends[index] = dataclasses.replace(
                record.ends[index], error="hung: its thread did not end within 30 s of stop"
            )
    return record, actions


def _fleet(
    options: RunOptions, addresses: list[str], wait_replicas: list[int]
) -> list[ClientRobot]:
    """The run's robots on the client library; every other one streams, and every third one,
    from the second, steps as SAFETY (never to be shed)."""
    return [
        ClientRobot(
            addresses,
            _observations(options, i),
            1.0 / options.rate_hz,
            streaming=i % 2 == 1,
            step_timeout_s=options.step_timeout_s,
            wait_replicas=wait_replicas[i],
            priority=Priority.SAFETY if i % 3 == 1 else Priority.NORMAL,
        )
        for i in range(options.robots)
    ]


def _step_records(fleet: list[ClientRobot], t0: float) -> list[StepRecord]:
    """Every attempt of every robot, its times from the run's start (t0, time.monotonic())."""
    return [
        StepRecord(
            index,
            o.seq,
            round(o.at - o.latency_s - t0, 5),
            round(o.at - t0, 5),
            o.code,
            MODES[o.serve_mode] if o.code == "OK" else "",
            o.model_version,
            o.exit_stage,
            o.state_reset,
        )
        for index, robot in enumerate(fleet)
        for o in robot.outcomes
    ]


def _inject_all(
    ctx: FaultContext,
    events: list[FaultEvent],
    record: RunRecord,
    cluster: ChaosCluster,
    seen: dict[int, str],
) -> None:
    ended = -SETTLE_S
    for event in events:
        # At its time, but never sooner than SETTLE_S after the previous fault ended: each
        # fault's recovery is seen on its own (a restart can outlast the period of `mixed`).
        time.sleep(max(0.0, event.at_s - ctx.clock(), ended + SETTLE_S - ctx.clock()))
        log.info("fault %s (hold %.1fs) at %.1fs", event.fault, event.hold_s, ctx.clock())
        window = inject(ctx, event)
        log.info("fault %s on %s: %s", window.fault, window.target, window.detail)
        record.faults.append(window)
        ended = window.end_s
        seen.update(cluster.pids())


def _ends(
    fleet: list[ClientRobot], wait_replicas: list[int], addresses: list[str]
) -> list[RobotEnd]:
    """Each robot's end, its session's seq read from the store through the session API."""
    ends = []
    with ActionMeshClient(addresses, client_id="chaos-audit") as auditor:
        for index, robot in enumerate(fleet):
            try:
                stored: int | None = auditor.session_info(robot.session_id).seq
            except Exception as exc:  # a lost session: recorded, the verdicts judge it
                log.warning("robot %d: session %s unreadable: %s", index, robot.session_id, exc)
                stored = None
            error = "" if robot.error is None else f"{type(robot.error).__name__}: {robot.error}"
            ends.append(
                RobotEnd(
                    index,
                    robot.session_id,
                    wait_replicas[index],
                    robot.acked,
                    stored,
                    error,
                    robot.priority,
                )
            )
    return ends


def _compare_with_reference(
    record: RunRecord, options: RunOptions, models: dict[str, ActionModel], actions: Actions
) -> None:
    """Fill each answer's ref_error: its distance from the never-failed run of its robot's
    observations on its version (the full head for FULL, the exit head for EARLY_EXIT), up to
    the robot's first announced state reset."""
    # One thread: on a loaded 2-core machine torch's second thread spin-waits for a core and
    # makes these small sequential steps about 50 times slower.
    torch.set_num_threads(1)
    by_robot: dict[int, list[int]] = {}
    for index, s in enumerate(record.steps):
        if s.code == "OK":
            by_robot.setdefault(s.robot, []).append(index)
    robots = sorted(by_robot)
    runs = [
        _observations(options, r)[: max(record.steps[i].seq for i in by_robot[r])] for r in robots
    ]
    for version, model in models.items():
        if not any(record.steps[i].model_version == version for r in robots for i in by_robot[r]):
            continue
        references = dict(zip(robots, reference_with_exits_batch(model, runs), strict=True))
        for robot in robots:
            full, exits = references[robot]
            reset = False
            for i in sorted(by_robot[robot], key=lambda i: record.steps[i].seq):
                s = record.steps[i]
                reset = reset or s.state_reset
                action = actions.get(robot, {}).get(s.seq)
                if reset or action is None or s.mode == "FALLBACK" or s.model_version != version:
                    continue
                want = full[s.seq - 1] if s.mode == "FULL" else exits[s.seq - 1][s.exit_stage]
                error = round(float((action - want).abs().max()), 8)
                record.steps[i] = dataclasses.replace(s, ref_error=error)
