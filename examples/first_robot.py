"""A first robot: a 50 Hz control loop fed by actionmesh, the way docs/first-robot.md builds it.

    actionmesh up                       # in another terminal: a local cluster on 127.0.0.1:50050
    python examples/first_robot.py      # this robot, for 10 s

Only actionmesh-client is needed here (`pip install ./service/client_dist`): grpcio, protobuf
and numpy. Replace `read_sensors` and `send_to_joints` with your robot's.
"""

from __future__ import annotations

import argparse
import collections
import gc
import time

import numpy as np

from actionmesh_client import (
    ActionBuffer,
    ActionMeshClient,
    ActionMeshClientError,
    ActionSpec,
    BufferConfig,
    Notice,
    WhenDry,
)


def read_sensors(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Your robot's observation: float32, exactly action_spec.observation_dim values, finite."""
    return (rng.standard_normal(dim) * 0.1).astype(np.float32)


def send_to_joints(command: np.ndarray) -> None:
    """Your robot's actuators: one command per joint (action_spec.joint_names, in order)."""


def control_loop(
    buffer: ActionBuffer, spec: ActionSpec, seconds: float
) -> collections.Counter[str]:
    """One command per period from the buffer, whatever the service is doing; what it played."""
    rng = np.random.default_rng(0)
    played: collections.Counter[str] = collections.Counter()
    period_s = spec.action_period_ms / 1e3
    next_tick = time.monotonic()
    end = next_tick + seconds
    while next_tick < end:
        command = buffer.tick(read_sensors(spec.observation_dim, rng))  # never blocks on gRPC
        send_to_joints(command.action)
        played[f"source {command.source.value}"] += 1
        played[f"mode {command.serve_mode.value if command.serve_mode else '-'}"] += 1
        next_tick += period_s
        pause = next_tick - time.monotonic()
        played["late"] += pause <= 0
        time.sleep(max(pause, 0.0))
    return played


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", action="append", help="a coordinator (repeat for several)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run")
    args = parser.parse_args()
    events: collections.Counter[str] = collections.Counter()

    def on_event(notice: Notice) -> None:  # each dry spell, failed step, version change...
        events[notice.event.value] += 1

    addresses = args.address or ["127.0.0.1:50050"]
    with (
        ActionMeshClient(addresses, client_id="first-robot") as client,
        client.session() as session,
        session.stream() as stream,
    ):
        spec = session.action_spec
        print(
            f"session open: {spec.observation_dim} values in, {spec.horizon} x {spec.joints} "
            f"actions out, one every {spec.action_period_ms:g} ms"
        )
        buffer = ActionBuffer(
            lambda obs, tick: stream.step(obs, tick=tick),  # runs in the background
            spec.joints,
            BufferConfig(when_dry=WhenDry.HOLD),  # position control: hold the last command
            on_event=on_event,
        )
        gc.collect()
        gc.freeze()  # set-up's objects: no full collection walks them mid-loop (tens of ms)
        try:
            played = control_loop(buffer, spec, args.seconds)
        except ActionMeshClientError as exc:  # the session cannot go on (closed, bad input)
            print(f"stopped: {type(exc).__name__}: {exc}")
            return 1
        buffer.wait_idle(2.0)
    print(f"played {dict(sorted(played.items()))} events {dict(sorted(events.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
