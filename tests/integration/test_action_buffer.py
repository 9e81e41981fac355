"""A robot at 50 Hz through the action buffer and the client library, on a real cluster: every
tick gets a command at once, chunks come in the background, and every chunk is the one the
in-process model gives for the observations the buffer sent."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from chaos.reference import reference_run
from chaos.robot_sim import SimulatedArm
from service.client import ActionBuffer, ActionMeshClient, BufferConfig, Notice, Source
from service.client.session_client import StepResult
from service.local.local_cluster import LocalCluster
from service.model import weights

TICKS, PERIOD_S = 150, 0.02


def test_a_robot_on_the_buffer_gets_a_command_every_tick_and_correct_chunks(
    cluster: LocalCluster,
) -> None:
    sent: list[torch.Tensor] = []
    answers: list[StepResult] = []
    notices: list[Notice] = []
    with (
        ActionMeshClient([cluster.address], client_id="buffer-robot") as client,
        client.session() as session,
        session.stream() as stream,
    ):

        def step(observation: torch.Tensor) -> StepResult:
            result = stream.step(observation)
            sent.append(observation)
            answers.append(result)
            return result

        spec = session.action_spec
        arm = SimulatedArm(spec.observation_dim, spec.joints, seed=5)
        buffer = ActionBuffer(step, spec.joints, BufferConfig(refill_below=4), notices.append)
        commands, tick_s = [], []
        next_tick = time.monotonic()
        for _ in range(TICKS):
            started = time.monotonic()
            command = buffer.tick(arm.observation().numpy())
            tick_s.append(time.monotonic() - started)
            commands.append(command)
            arm.apply(torch.from_numpy(command.action).unsqueeze(0), PERIOD_S)  # one command
            next_tick += PERIOD_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        assert buffer.wait_idle(5.0), "the last step came back"
    # A wait on the network would cost a step's latency, up to the client's timeout (0.5 s).
    assert statistics.median(tick_s) < 0.002 and max(tick_s) < 0.5
    first = next(i for i, c in enumerate(commands) if c.source is Source.CHUNK)
    assert all(c.source is not Source.IDLE for c in commands[first:])
    assert all(np.isfinite(c.action).all() for c in commands)
    assert len(answers) >= TICKS // 8, "chunks kept coming"
    assert all(a.serve_mode == "FULL" for a in answers)
    model, _ = weights.load_model(cluster.weights_dir)
    want, _ = reference_run(model, sent)
    for i, (got, ref) in enumerate(zip(answers, want, strict=True)):
        assert torch.allclose(got.action, ref, atol=1e-5), f"chunk {i} differs from the model's"
