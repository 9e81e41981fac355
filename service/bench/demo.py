"""`actionmesh demo`: a local cluster plus a simulated robot playing its action chunks at
control rate through the client's action buffer; optionally a stage leader killed mid-run, to
show the robot kept playing actions while the answers degraded and came back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

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
from chaos.robot_sim import SimulatedArm
from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.runtime.settings import DemoSettings
from state.backends import open_routing_table
from state.session import short_id

_MODES = (
    "FULL",
    "EARLY_EXIT",
    "FALLBACK",
    "UNSPECIFIED",
)  # a step's outcome, not an error
_HEADER = f"{'tick':>6} {'t_s':>6} {'source':<6} {'mode':<10} {'queued':>6} {'step_ms':>8}  model"


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
    """Play one simulated arm through the action buffer; with `cluster` and
    settings.kill_stage_at_s, kill and restart a stage leader meanwhile."""
    with (
        ActionMeshClient([address], client_id="demo-robot", tls=tls) as client,
        client.session() as session,
    ):
        return _drive(session, settings, cluster)


def _drive(session: Session, settings: DemoSettings, cluster: LocalCluster | None) -> DemoRun:
    spec = session.action_spec
    arm = SimulatedArm(spec.observation_dim, spec.joints, settings.seed)
    period_s = 1.0 / settings.rate_hz
    total = max(1, round(settings.duration_s * settings.rate_hz))
    run = DemoRun(period_s)
    print(
        f"session {short_id(session.session_id)} model {session.model_version}: {total} ticks at "
        f"{settings.rate_hz:g} Hz, chunks of {spec.horizon} actions every "
        f"{spec.action_period_ms:g} ms, through the action buffer"
    )
    print(_HEADER)
    config = BufferConfig(when_dry=WhenDry(settings.when_dry))
    started = next_tick = time.monotonic()
    run_over = threading.Event()
    fault_thread = _start_fault(settings, cluster, run, started, run_over)
    with session.stream() as stream:
        buffer = ActionBuffer(_RecordingStepper(stream, run, started), spec.joints, config)
        try:
            for _ in range(total):
                late = time.monotonic() - next_tick > period_s
                command = buffer.tick(arm.observation().numpy())
                arm.apply(torch.from_numpy(command.action).unsqueeze(0), period_s)
                _record_tick(run, command, time.monotonic() - started, late)
                if command.tick % settings.print_every == 0 or command.tick == 1:
                    _print_row(run, command, buffer.queued)
                next_tick += period_s
                time.sleep(max(0.0, next_tick - time.monotonic()))
        except ActionMeshClientError as exc:  # the session cannot go on (gone, refused)
            run.fatal = f"{exc.code}: {exc}"
            print(f"the session cannot go on: {run.fatal}")
        buffer.wait_idle(5.0)
    run_over.set()
    if fault_thread is not None:
        fault_thread.join(timeout=120)
    return run


def _record_tick(run: DemoRun, command: Command, at_s: float, late: bool) -> None:
    mode = command.serve_mode.value if command.serve_mode is not None else ""
    run.ticks.append(TickRecord(at_s, command.source, mode, late))


def _print_row(run: DemoRun, command: Command, queued: int) -> None:
    tick = run.ticks[-1]
    last = f"{run.steps[-1].latency_ms:8.2f}" if run.steps else f"{'-':>8}"
    print(
        f"{command.tick:>6} {tick.at_s:>6.2f} {command.source.value:<6} "
        f"{tick.serve_mode or '-':<10} {queued:>6} {last}  {command.model_version or '-'}"
    )


def _start_fault(
    settings: DemoSettings,
    cluster: LocalCluster | None,
    run: DemoRun,
    started: float,
    run_over: threading.Event,
) -> threading.Thread | None:
    if settings.kill_stage_at_s is None or cluster is None:
        return None
    stage = settings.kill_stage if settings.kill_stage is not None else settings.stages - 1
    run.fault = Fault(stage, settings.kill_stage_at_s)
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
    """In the background: kill -9 the stage's leader at its time, restart it later.

    Stays alive until the run is over: a child is told to stop when the *thread* that started
    it exits (PR_SET_PDEATHSIG follows the thread), so the restarted shard would stop at once.
    """
    table = open_routing_table(cluster.etcd_url, settings.cluster)
    table.start()
    try:
        time.sleep(max(0.0, started + fault.at_s - time.monotonic()))
        view = table.snapshot().get(fault.stage)
        if view is None or view.leader is None:
            fault.error = f"stage {fault.stage} has no leader to kill"
            return
        fault.replica = view.leader.replica_id
        cluster.replica_process(fault.replica).kill()
        fault.killed_s = time.monotonic() - started
        print(f"fault: killed the leader of stage {fault.stage} ({fault.replica})")
        time.sleep(settings.restart_after_s)
        cluster.restart_replica(fault.replica)
        fault.back_s = time.monotonic() - started
        print(f"fault: {fault.replica} restarted and ready")
    except Exception as exc:  # the demo reports it; the robot loop goes on regardless
        fault.error = f"{type(exc).__name__}: {exc}"
    finally:
        table.stop()
        run_over.wait()


def summarize(run: DemoRun) -> list[str]:
    """The summary lines: steps, ticks by command source, chunks by serve mode, the fault."""
    ok = [s for s in run.steps if s.outcome in _MODES]
    failed = len(run.steps) - len(ok)
    latencies = [s.latency_ms / 1e3 for s in ok]
    sources = Counter(t.source for t in run.ticks)
    late = sum(t.late for t in run.ticks)
    modes = Counter(s.outcome for s in ok)
    period_ms = run.period_s * 1e3
    lines = [
        f"summary: {len(ok)} steps ok, {failed} failed; step p50 "
        f"{percentile_ms(latencies, 50):.2f} ms, p99 {percentile_ms(latencies, 99):.2f} ms",
        f"ticks: {len(run.ticks)} played, "
        + ", ".join(f"{s.name} {sources.get(s, 0)}" for s in Source)
        + f"; {late} late (the loop began over a {period_ms:.0f} ms period behind)",
        "chunks by serve mode: "
        + (", ".join(f"{m} {n}" for m, n in sorted(modes.items())) or "none"),
    ]
    if run.fault is not None:
        lines.append(_fault_line(run))
    return lines


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
    with LocalCluster(settings) as cluster:
        print(
            f"cluster up: coordinator {cluster.address}, redis {cluster.redis_url}, logs {cluster.log_dir}"
        )
        if cluster.tls_dir is not None:
            print(f"mutual TLS: the robot presents {cluster.tls_dir / 'robot-a.pem'}")
        result = drive_robot(cluster.address, settings, cluster, cluster.client_tls("robot-a"))
    print("cluster stopped")
    print()
    for line in summarize(result):
        print(line)
    if settings.timeline is not None:
        from service.bench.demo_timeline import write_timeline  # matplotlib, only when asked

        write_timeline(result, settings.timeline)
        print(f"timeline written to {settings.timeline}")
    unexpected = settings.kill_stage_at_s is None and any(
        s.outcome not in _MODES for s in result.steps
    )
    return 1 if result.fatal or unexpected else 0
