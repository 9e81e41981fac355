"""The robot's side of a session: play each reply's action chunk at the control rate and ask
for the next chunk in the background before the queue runs dry.

A reply carries `horizon` actions, the first for the tick whose observation it answered. The
control loop calls `tick(observation)` once per control period and gets back the command for
that tick at once: never a wait on the network. When fewer than `refill_below` actions remain,
the tick's observation is sent (one step in flight at a time, in a background thread); the
chunk it brings is merged into the queue, its actions for ticks already past dropped. While a
step is shed, slow or failing over, the robot plays the rest of the last chunk: the cheapest
degraded mode there is. If the queue runs dry, the buffer holds the last command or brings it
to a controlled stop, as configured, and says so (callback, metric, and the command's source).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from prometheus_client import Counter

from service.client.client_errors import ActionMeshClientError, InvalidObservation
from service.client.session_client import StepResult

log = logging.getLogger(__name__)

BUFFER_EVENTS = Counter(
    "actionmesh_client_buffer_events_total",
    "Action buffer events: chunks merged, dry spells, failed steps, version changes.",
    ["event"],
)

Array = npt.NDArray[np.float32]
StepFn = Callable[[torch.Tensor], StepResult]


class Merge(enum.Enum):
    """What an overlapping tick plays when a new chunk arrives."""

    LATEST = "latest"  # the new chunk's action (it saw a newer observation)
    AVERAGE = "average"  # new_weight x new + (1 - new_weight) x queued: smoother hand-overs


class WhenDry(enum.Enum):
    """What a tick with no queued action plays."""

    HOLD = "hold"  # the last command again (position control)
    STOP = "stop"  # the last command ramped down to zero over stop_ticks (velocity control)


class Source(enum.Enum):
    """Where a tick's command came from."""

    CHUNK = "chunk"  # a queued action of a chunk
    HOLD = "hold"  # dry: the last command held
    STOP = "stop"  # dry: ramping down, or stopped
    IDLE = "idle"  # nothing received yet: zeros


class Event(enum.Enum):
    CHUNK = "chunk"  # a chunk merged into the queue
    DRY = "dry"  # the queue ran dry (once per dry spell)
    STEP_FAILED = "step_failed"  # a step failed after the client's own retries; resent next tick
    VERSION_CHANGED = "version_changed"  # a chunk from another model version than the last
    STATE_RESET = "state_reset"  # a chunk computed without the session's history


@dataclass(frozen=True)
class BufferConfig:
    refill_below: int = 4  # ask for the next chunk when fewer actions than this remain queued
    merge: Merge = Merge.LATEST
    new_weight: float = 0.5  # Merge.AVERAGE: the new chunk's weight on overlapping ticks
    when_dry: WhenDry = WhenDry.HOLD
    stop_ticks: int = 5  # WhenDry.STOP: ticks from the last command down to zero

    def __post_init__(self) -> None:
        if self.refill_below < 1 or self.stop_ticks < 1 or not 0.0 < self.new_weight <= 1.0:
            raise ValueError("need refill_below >= 1, stop_ticks >= 1 and 0 < new_weight <= 1")


@dataclass(frozen=True)
class Command:
    """One tick's command and where it came from."""

    tick: int
    action: Array  # [joints]
    source: Source
    serve_mode: str = ""  # of the chunk the action came from (FULL, EARLY_EXIT, FALLBACK)
    model_version: str = ""


@dataclass(frozen=True)
class Notice:
    """What the event callback gets."""

    event: Event
    tick: int
    detail: str = ""


@dataclass
class _Queued:
    action: Array
    serve_mode: str
    model_version: str


@dataclass(frozen=True)
class _Dry:
    since: int  # its first tick
    held: Array  # the command it holds, or ramps down from


@dataclass
class _State:
    queue: dict[int, _Queued] = field(default_factory=dict)  # tick -> action
    last: Command | None = None
    dry: _Dry | None = None  # the current dry spell
    in_flight: bool = False
    fatal: ActionMeshClientError | None = None
    model_version: str = ""


def _in_thread(job: Callable[[], None]) -> None:
    threading.Thread(target=job, name="action-buffer-step", daemon=True).start()


class ActionBuffer:
    """Use from the control loop's thread: `command = buffer.tick(observation)` every period.

    `step` sends one observation and returns its reply (say `session.stream().step`, with the
    priority and timeouts the robot wants); it runs in the background, one at a time.
    """

    def __init__(
        self,
        step: StepFn,
        joints: int,
        config: BufferConfig | None = None,
        on_event: Callable[[Notice], None] | None = None,
        run_in_background: Callable[[Callable[[], None]], None] = _in_thread,
    ) -> None:
        self._step, self.joints = step, joints
        self.config = config or BufferConfig()
        self._on_event, self._background = on_event, run_in_background
        self._state, self._lock = _State(), threading.Lock()
        self._idle = threading.Event()  # no step in flight
        self._idle.set()
        self._tick = -1

    @property
    def queued(self) -> int:
        """Actions queued for ticks after the last one played."""
        with self._lock:
            return sum(1 for t in self._state.queue if t > self._tick)

    def tick(self, observation: npt.ArrayLike) -> Command:
        """The command for the next tick; may start a step for this observation. Raises the
        step's error when the session cannot go on (gone, stepped elsewhere, observation
        refused)."""
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))
        self._tick += 1
        tick = self._tick
        with self._lock:
            state = self._state
            if state.fatal is not None:
                raise state.fatal
            queued = state.queue.pop(tick, None)
            for old in [t for t in state.queue if t < tick]:
                del state.queue[old]
            ask = len(state.queue) < self.config.refill_below and not state.in_flight
            state.in_flight = state.in_flight or ask
            if ask:
                self._idle.clear()
            command, went_dry = self._command(tick, queued)
            state.last = command
        if went_dry:
            self._notify(Event.DRY, tick, f"no action queued for tick {tick}")
        if ask:
            self._background(lambda: self._request(tick, obs))
        return command

    def _command(self, tick: int, queued: _Queued | None) -> tuple[Command, bool]:
        """The tick's command, and whether a dry spell starts with it (under the lock)."""
        state = self._state
        if queued is not None:
            state.dry = None
            command = Command(
                tick, queued.action, Source.CHUNK, queued.serve_mode, queued.model_version
            )
            return command, False
        last = state.last
        if last is None or last.source is Source.IDLE:
            return Command(tick, np.zeros(self.joints, np.float32), Source.IDLE), False
        went_dry = state.dry is None
        dry = state.dry = state.dry or _Dry(tick, last.action)
        if self.config.when_dry is WhenDry.HOLD:
            action = dry.held
        else:  # equal steps down to zero, reached on the spell's stop_ticks-th tick
            done = tick - dry.since + 1
            action = (dry.held * max(0.0, 1.0 - done / self.config.stop_ticks)).astype(np.float32)
        source = Source.HOLD if self.config.when_dry is WhenDry.HOLD else Source.STOP
        return Command(tick, action, source, last.serve_mode, last.model_version), went_dry

    def _request(self, tick: int, observation: torch.Tensor) -> None:
        """In the background: one step; its chunk merged for ticks tick, tick+1, ... Whatever
        goes wrong, the buffer is left able to ask again (never waiting for a lost step)."""
        try:
            self._merge(tick, self._step(observation))
        except InvalidObservation as exc:
            self._finish(fatal=exc)
        except ActionMeshClientError as exc:
            if exc.code in ("NOT_FOUND", "FAILED_PRECONDITION"):  # gone, or stepped elsewhere
                self._finish(fatal=exc)
                return
            self._finish()
            self._notify(Event.STEP_FAILED, tick, str(exc))
        except Exception as exc:  # a bug below us must not stop the robot's chunks for good
            log.exception("action buffer tick=%d: the step failed unexpectedly", tick)
            self._finish()
            self._notify(Event.STEP_FAILED, tick, f"{type(exc).__name__}: {exc}")

    def _merge(self, tick: int, result: StepResult) -> None:
        chunk = result.action.detach().cpu().numpy().astype(np.float32, copy=False)
        events: list[Notice] = []
        with self._lock:
            state = self._state
            if state.model_version and result.model_version != state.model_version:
                events.append(
                    Notice(
                        Event.VERSION_CHANGED,
                        tick,
                        f"model {state.model_version} -> {result.model_version}",
                    )
                )
                state.queue.clear()  # never play an older version's actions after a newer one
            state.model_version = result.model_version
            for i, action in enumerate(chunk):
                t = tick + i
                if t <= self._tick:
                    continue  # that tick has been played
                old = state.queue.get(t)
                if old is not None and self.config.merge is Merge.AVERAGE:
                    w = self.config.new_weight
                    action = (w * action + (1.0 - w) * old.action).astype(np.float32)
                state.queue[t] = _Queued(action, result.serve_mode, result.model_version)
            state.in_flight = False
            self._idle.set()
        if result.state_reset:
            events.append(Notice(Event.STATE_RESET, tick, f"seq {result.seq}"))
        events.append(Notice(Event.CHUNK, tick, f"seq {result.seq} {result.serve_mode}"))
        for notice in events:
            self._notify(notice.event, notice.tick, notice.detail)

    def _finish(self, fatal: ActionMeshClientError | None = None) -> None:
        with self._lock:
            self._state.in_flight = False
            self._state.fatal = self._state.fatal or fatal
            self._idle.set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits for the step in flight, if any (say before closing the session); True once
        none is."""
        return self._idle.wait(timeout_s)

    def _notify(self, event: Event, tick: int, detail: str) -> None:
        BUFFER_EVENTS.labels(event.value).inc()
        if event is not Event.CHUNK:
            log.info("action buffer tick=%d %s: %s", tick, event.value, detail)
        if self._on_event is not None:
            self._on_event(Notice(event, tick, detail))
