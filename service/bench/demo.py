"""`actionmesh demo`: a local cluster serving the trained reach-task policy (a small checkpoint
shipped with the package), and a simulated arm playing reach-task episodes one after another,
its action chunks played at control rate through the client's action buffer. A quarter of the
way in a stage leader is killed and restarted (not with --no-faults): the summary shows the
answers degrade, labelled, and come back, the robot kept playing actions meanwhile, and what it
cost on the task.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from actionmesh_client import (
    ActionBuffer,
    ActionMeshClient,
    ActionMeshClientError,
    BufferConfig,
    ClientTls,
    Command,
    Session,
    Source,
    StepResult,
    StepStream,
    WhenDry,
)
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.model.weights_files import read_info
from service.runtime.command_settings import DEMO_TRAINING_FLAGS, DemoSettings
from service.runtime.gc_pauses import freeze_startup_objects
from service.training.task import ReachArm, TaskConfig, derive_seed
from state.backends import open_routing_table
from state.session import short_id

# The demo's checkpoint, shipped as package data: `actionmesh train` with DEMO_TRAINING_FLAGS.
DEMO_WEIGHTS = Path(__file__).with_name("demo_weights")
_MODES = (
    "FULL",
    "EARLY_EXIT",
    "FALLBACK",
    "UNSPECIFIED",
)  # a step's outcome, not an error
_HEADER = (
    f"{'ep':>3} {'tick':>4} {'t_s':>6} {'source':<6} {'mode':<10} {'queued':>6} {'step_ms':>8}"
    "  model"
)


@dataclass(frozen=True)
class StepRecord:
    sent_s: float  # since the run started
    latency_ms: float
    outcome: str  # the serve mode, or the error code of a failed step


@dataclass(frozen=True)
class TickRecord:
    at_s: float
    source: Source
    serve_mode: str  # of the chunk the command came from ("" when IDLE)
    late: bool  # the loop began this tick more than a period after its schedule


@dataclass(frozen=True)
class EpisodeRecord:
    """One reach-task episode (on a session of its own unless none could be opened), judged
    by the task's success rule."""

    started_s: float
    ended_s: float
    success: bool
    final_error: float  # RMS joint error to the target after the last tick
    modes: dict[str, int]  # ticks by the serve mode of the chunk their command came from
    fresh: bool = True  # on a new session; False: the previous episode's, memory carried over

    @property
    def all_full(self) -> bool:
        """Every command from a FULL chunk (or none received yet)."""
        return set(self.modes) <= {"FULL", ""}


@dataclass
class Fault:
    """A stage leader killed at `at_s`, restarted (ready again) at `back_s`."""

    stage: int
    at_s: float
    replica: str = ""
    killed_s: float | None = None
    back_s: float | None = None
    error: str = ""


@dataclass
class DemoRun:
    period_s: float
    ticks: list[TickRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    episodes: list[EpisodeRecord] = field(default_factory=list)
    fault: Fault | None = None
    fatal: str = ""  # why the session could not go on, if it could not


class _RecordingStepper:
    """The buffer's step function: one streamed step, timed and recorded."""

    def __init__(self, stream: StepStream, run: DemoRun, started: float) -> None:
        self.stream, self.run, self.started = stream, run, started

    def __call__(self, observation: npt.NDArray[np.float32], tick: int) -> StepResult:
        sent = time.monotonic()
        try:
            result = self.stream.step(observation, tick=tick)
        except ActionMeshClientError as exc:
            self._record(sent, exc.code)
            raise
        self._record(sent, result.serve_mode.value)
        return result

    def _record(self, sent: float, outcome: str) -> None:
        latency_ms = (time.monotonic() - sent) * 1e3
        self.run.steps.append(StepRecord(sent - self.started, latency_ms, outcome))


def drive_robot(
    address: str,
    settings: DemoSettings,
    cluster: LocalCluster | None = None,
    tls: ClientTls | None = None,
) -> DemoRun:
    """Play reach-task episodes through the action buffer, each on a session of its own (the
    task's policy starts every episode from fresh memory); with `cluster` and a fault to
    inject, kill and restart a stage leader meanwhile."""
    run = DemoRun(1.0 / settings.rate_hz)
    started = time.monotonic()
    run_over = threading.Event()
    fault_thread = _start_fault(settings, cluster, run, started, run_over)
    try:
        with ActionMeshClient([address], client_id="demo-robot", tls=tls) as client:
            _episodes(client, settings, run, started)
    finally:
        run_over.set()
        if fault_thread is not None:
            fault_thread.join(timeout=120)
    return run


def _episodes(
    client: ActionMeshClient, settings: DemoSettings, run: DemoRun, started: float
) -> None:
    """A new session per episode. When none can be opened (the coordinator cannot serve a new
    session in any mode), the episode goes on in the previous session, its memory carried
    over, and says so. Past --duration-s, episodes go on
    while the killed stage is not FULL again (a shard restarts slowly on a busy machine), for
    at most --start-timeout-s."""
    session: Session | None = None
    planned = episode_count(settings)
    overtime_until = started + settings.duration_s + settings.start_timeout_s
    try:
        for index in itertools.count():
            if index >= planned and not stage_recovering(run, overtime_until):
                return
            if index == planned:
                print("the stage is not FULL again yet: the run goes on until it is")
            try:
                session, fresh = _next_session(client, session, index)
                if index == 0:
                    _print_plan(session, settings)
                record = _episode(session, settings, run, started, index, fresh)
            except ActionMeshClientError as exc:  # the session cannot go on (gone, refused)
                run.fatal = f"{exc.code}: {exc}"
                print(f"the session cannot go on: {run.fatal}")
                return
            run.episodes.append(record)
            print(
                f"episode {index + 1}: "
                + ("reached the target" if record.success else "missed the target")
                + f" (error {record.final_error:.3f})"
            )
    finally:
        if session is not None:
            _close(session)


def stage_recovering(run: DemoRun, until: float) -> bool:
    """The fault's stage was killed and not FULL again yet (and `until` is not past)."""
    fault = run.fault
    if fault is None or fault.killed_s is None or fault.error or time.monotonic() > until:
        return False
    back = fault.back_s
    return back is None or not any(s.sent_s >= back and s.outcome == "FULL" for s in run.steps)


def _next_session(
    client: ActionMeshClient, current: Session | None, index: int
) -> tuple[Session, bool]:
    """A new session for episode `index` (the current one closed), or, when none can be opened
    now, the current one; and whether it is new."""
    try:
        opened = client.open_session()
    except ActionMeshClientError as exc:
        if current is None or exc.code != "UNAVAILABLE":
            raise
        print(
            f"episode {index + 1}: session {short_id(current.session_id)} goes on, its memory "
            f"carried over: no session can be opened now ({exc.code}; the log says why)"
        )
        return current, False
    if current is not None:
        _close(current)
    print(
        f"episode {index + 1}: session {short_id(opened.session_id)} model {opened.model_version}"
    )
    return opened, True


def _close(session: Session) -> None:
    try:
        session.close()
    except ActionMeshClientError as exc:  # it ends with its TTL anyway
        print(f"session {short_id(session.session_id)} not closed: {exc}")


def episode_count(settings: DemoSettings) -> int:
    """Whole episodes of the reach task that fit in --duration-s (at least one)."""
    return max(1, round(settings.duration_s * settings.rate_hz / TaskConfig().steps))


def _print_plan(session: Session, settings: DemoSettings) -> None:
    spec = session.action_spec
    episodes = episode_count(settings)
    print(
        f"the reach task: {episodes} episodes of {TaskConfig().steps} ticks at "
        f"{settings.rate_hz:g} Hz, chunks of {spec.horizon} actions every "
        f"{spec.action_period_ms:g} ms, through the action buffer"
    )
    print(_HEADER)


def _episode(
    session: Session,
    settings: DemoSettings,
    run: DemoRun,
    started: float,
    index: int,
    fresh: bool,
) -> EpisodeRecord:
    """One episode: every tick sends the arm's observation unless a step is in flight (the
    policy was trained on every step) and plays the buffer's command for it."""
    spec = session.action_spec
    task = TaskConfig(
        joints=spec.joints, horizon=spec.horizon, observation_dim=spec.observation_dim
    )
    arm = ReachArm(task, derive_seed("demo", settings.seed, index))
    config = BufferConfig(refill_below=spec.horizon, when_dry=WhenDry(settings.when_dry))
    period_s = run.period_s
    modes: Counter[str] = Counter()
    first = len(run.ticks)
    with session.stream() as stream:
        buffer = ActionBuffer(_RecordingStepper(stream, run, started), spec.joints, config)
        next_tick = time.monotonic()
        try:
            while not arm.done:
                late = time.monotonic() - next_tick > period_s
                command = buffer.tick(arm.observation().numpy())
                idle = command.source is Source.IDLE  # no chunk yet: the arm stays put
                arm.apply(None if idle else torch.from_numpy(command.action))
                _record_tick(run, command, time.monotonic() - started, late)
                modes[run.ticks[-1].serve_mode] += 1
                if len(run.ticks) % settings.print_every == 0 or len(run.ticks) == 1:
                    _print_row(run, index, command, buffer.queued)
                next_tick += period_s
                time.sleep(max(0.0, next_tick - time.monotonic()))
        finally:
            buffer.wait_idle(5.0)
    return EpisodeRecord(
        started_s=run.ticks[first].at_s,
        ended_s=run.ticks[-1].at_s,
        success=arm.success(),
        final_error=arm.final_error(),
        modes=dict(modes),
        fresh=fresh,
    )


def _record_tick(run: DemoRun, command: Command, at_s: float, late: bool) -> None:
    mode = command.serve_mode.value if command.serve_mode is not None else ""
    run.ticks.append(TickRecord(at_s, command.source, mode, late))


def _print_row(run: DemoRun, episode: int, command: Command, queued: int) -> None:
    tick = run.ticks[-1]
    last = f"{run.steps[-1].latency_ms:8.2f}" if run.steps else f"{'-':>8}"
    print(
        f"{episode + 1:>3} {command.tick:>4} {tick.at_s:>6.2f} {command.source.value:<6} "
        f"{tick.serve_mode or '-':<10} {queued:>6} {last}  {command.model_version or '-'}"
    )


def _start_fault(
    settings: DemoSettings,
    cluster: LocalCluster | None,
    run: DemoRun,
    started: float,
    run_over: threading.Event,
) -> threading.Thread | None:
    at_s = settings.fault_at_s
    if at_s is None or cluster is None:
        return None
    stage = settings.kill_stage if settings.kill_stage is not None else cluster.model.n_stages - 1
    run.fault = Fault(stage, at_s)
    thread = threading.Thread(
        target=_kill_and_restart,
        args=(cluster, settings, run.fault, started, run_over),
        name="demo-fault",
        daemon=True,
    )
    thread.start()
    return thread


def _kill_and_restart(
    cluster: LocalCluster,
    settings: DemoSettings,
    fault: Fault,
    started: float,
    run_over: threading.Event,
) -> None:
    """In the background: kill -9 the stage's leader at its time, restart it later (neither
    once the run is over: a short run is not kept waiting for a shard to start)."""
    table = open_routing_table(cluster.etcd_url, settings.cluster)
    table.start()
    try:
        if run_over.wait(max(0.0, started + fault.at_s - time.monotonic())):
            fault.error = "the run ended first"
            return
        view = table.snapshot().get(fault.stage)
        if view is None or view.leader is None:
            fault.error = f"stage {fault.stage} has no leader to kill"
            return
        fault.replica = view.leader.replica_id
        cluster.replica_process(fault.replica).kill()
        fault.killed_s = time.monotonic() - started
        print(f"fault: killed the leader of stage {fault.stage} ({fault.replica})")
        if run_over.wait(settings.restart_after_s):
            fault.error = "the run ended first"
            return
        cluster.restart_replica(fault.replica)
        fault.back_s = time.monotonic() - started
        print(f"fault: {fault.replica} restarted and ready")
    except Exception as exc:  # the demo reports it; the robot loop goes on regardless
        fault.error = f"{type(exc).__name__}: {exc}"
    finally:
        table.stop()


def summarize(run: DemoRun) -> list[str]:
    """The summary lines: steps, ticks by command source and by serve mode, chunks by serve
    mode, success on the task, the fault."""
    ok = [s for s in run.steps if s.outcome in _MODES]
    failed = len(run.steps) - len(ok)
    latencies = [s.latency_ms / 1e3 for s in ok]
    sources = Counter(t.source for t in run.ticks)
    late = sum(t.late for t in run.ticks)
    modes = Counter(s.outcome for s in ok)
    tick_modes = Counter(t.serve_mode for t in run.ticks if t.serve_mode)
    period_ms = run.period_s * 1e3
    lines = [
        f"summary: {len(ok)} steps ok, {failed} failed; step p50 "
        f"{percentile_ms(latencies, 50):.2f} ms, p99 {percentile_ms(latencies, 99):.2f} ms",
        f"ticks: {len(run.ticks)} played, "
        + ", ".join(f"{s.name} {sources.get(s, 0)}" for s in Source)
        + f"; {late} late (the loop began over a {period_ms:.0f} ms period behind)",
        f"ticks by serve mode: {_counts(tick_modes)} (of the chunk each command came from)",
        f"chunks by serve mode: {_counts(modes)}",
        _task_line(run.episodes),
    ]
    if run.fault is not None:
        lines.append(_fault_line(run))
    return lines


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter.items())) or "none"


def _task_line(episodes: list[EpisodeRecord]) -> str:
    """Success by the task's own rule, apart for the episodes that played degraded answers."""
    won = sum(e.success for e in episodes)
    full = [e for e in episodes if e.all_full]
    degraded = [e for e in episodes if not e.all_full]
    carried = sum(not e.fresh for e in episodes)
    return (
        f"task: {won} of {len(episodes)} episodes reached the target (the reach task's rule: "
        f"on it at each of its last ticks); {sum(e.success for e in full)} of {len(full)} "
        f"played only FULL answers, {sum(e.success for e in degraded)} of {len(degraded)} "
        "played degraded ones"
        + (f"; {carried} went on in the previous episode's session" if carried else "")
    )


def _fault_line(run: DemoRun) -> str:
    fault = run.fault
    assert fault is not None
    if fault.killed_s is None:
        return f"fault: none injected ({fault.error or 'the run ended first'})"
    degraded = [s for s in run.steps if s.sent_s >= fault.killed_s and s.outcome != "FULL"]
    back = fault.back_s
    full_again = next(
        (s for s in run.steps if back is not None and s.sent_s >= back and s.outcome == "FULL"),
        None,
    )
    during = [t for t in run.ticks if fault.killed_s <= t.at_s <= (back or t.at_s)]
    played = sum(t.source is Source.CHUNK for t in during)
    return (
        f"fault: stage {fault.stage} leader {fault.replica} killed at {fault.killed_s:.2f} s, "
        + (f"ready again at {back:.2f} s" if back is not None else f"not restarted ({fault.error})")
        + f"; {len(degraded)} steps after the kill not FULL; while it was down the robot played "
        f"{played} of {len(during)} ticks from chunks"
        + (f"; FULL again {full_again.sent_s - back:.2f} s after" if full_again and back else "")
    )


def run(settings: DemoSettings) -> int:
    torch.set_num_threads(1)
    weights_dir = settings.weights_dir or DEMO_WEIGHTS
    settings = settings_for_weights(settings, weights_dir)
    with LocalCluster(settings, trained=weights_dir) as cluster:
        print(
            f"cluster up: coordinator {cluster.address}, redis {cluster.redis_url}, logs {cluster.log_dir}"
        )
        print(f"serving {_weights_origin(weights_dir)}")
        if cluster.tls_dir is not None:
            print(f"mutual TLS: the robot presents {cluster.tls_dir / 'robot-a.pem'}")
        freeze_startup_objects()  # the robot's loop: no full collection mid-episode
        result = drive_robot(cluster.address, settings, cluster, cluster.client_tls("robot-a"))
    print("cluster stopped")
    print()
    for line in summarize(result):
        print(line)
    from service.bench.demo_timeline import write_timeline  # matplotlib: only now

    write_timeline(result, settings.timeline)
    print(f"timeline written to {settings.timeline.resolve()}")
    unexpected = settings.fault_at_s is None and any(s.outcome not in _MODES for s in result.steps)
    return 1 if result.fatal or unexpected else 0


def settings_for_weights(settings: DemoSettings, weights_dir: Path) -> DemoSettings:
    """The settings with the weights' own stage count: a --stages that differs is refused, not
    served by a model it does not fit."""
    stages = read_info(weights_dir).config.n_stages
    if "stages" in settings.model_fields_set and settings.stages != stages:
        raise SystemExit(
            f"actionmesh demo: --stages {settings.stages}, but the model in {weights_dir} has "
            f"{stages}: leave --stages out, or give --weights-dir with a {settings.stages}-stage model"
        )
    return DemoSettings.model_validate(
        {**settings.model_dump(exclude_unset=True), "stages": stages}
    )


def _weights_origin(weights_dir: Path) -> str:
    version = read_info(weights_dir).version
    if weights_dir == DEMO_WEIGHTS:
        flags = " ".join(DEMO_TRAINING_FLAGS)
        return f"{version}, the checkpoint shipped for the demo (`actionmesh train {flags}`)"
    return f"{version} from {weights_dir}"
