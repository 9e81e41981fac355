"""Test-side helpers that act as a robot controller and as the in-process reference."""

from __future__ import annotations

import torch

from service.model.action_model import ActionModel
from service.proto import session_pb2, session_pb2_grpc, tensor_codec


def observations(seed: int, steps: int, dim: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=gen) for _ in range(steps)]


def open_session(stub: session_pb2_grpc.SessionServiceStub, ttl_s: float = 0.0) -> str:
    reply = stub.OpenSession(
        session_pb2.OpenSessionRequest(ttl_s=ttl_s, client_id="test"), timeout=10
    )
    return str(reply.session_id)


def step_request(session_id: str, seq: int, obs: torch.Tensor) -> session_pb2.StepRequest:
    return session_pb2.StepRequest(
        session_id=session_id, seq=seq, observation=tensor_codec.encode(obs)
    )


def step(
    stub: session_pb2_grpc.SessionServiceStub, session_id: str, seq: int, obs: torch.Tensor
) -> session_pb2.StepReply:
    reply: session_pb2.StepReply = stub.Step(step_request(session_id, seq, obs), timeout=10)
    return reply


def reference_run(
    model: ActionModel, obs: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Actions and final per-stage states of one session run in-process, one step at a time."""
    states = model.fresh_states(1)
    actions = []
    for o in obs:
        action, states = model.step(o.unsqueeze(0), states)
        actions.append(action[0])
    return actions, [s[0] for s in states]


def reference_with_exits(
    model: ActionModel, obs: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """A session run in-process with every stage's exit head read too: (full actions, and per
    step the action of each stage's head). An early exit at stage k leaves the later stages'
    states behind, and replay brings them level: so this run is also the reference of a session
    served EARLY_EXIT for a while, as long as its log reached back."""
    states = model.fresh_states(1)
    full, exits = [], []
    with torch.no_grad():
        for o in obs:
            x, new_states, heads = o.unsqueeze(0), [], []
            for k in range(model.cfg.n_stages):
                x, memory = model.stage(k)(x, states[k])
                new_states.append(memory)
                heads.append(model.stage(k).action(x)[0])
            states = new_states
            full.append(heads[-1])
            exits.append(heads)
    return full, exits


def reference_with_exits_batch(
    model: ActionModel, runs: list[list[torch.Tensor]]
) -> list[tuple[list[torch.Tensor], list[list[torch.Tensor]]]]:
    """reference_with_exits of several sessions at once, one batch row per session (rows are
    independent, so this is each session's own never-failed run, in a fraction of the time);
    a shorter run is padded with zeros past its end, which touch none of its steps."""
    if not runs:
        return []
    length = max(len(r) for r in runs)
    dim = model.cfg.observation_dim
    pad = torch.zeros(dim)
    states = model.fresh_states(len(runs))
    out: list[tuple[list[torch.Tensor], list[list[torch.Tensor]]]] = [([], []) for _ in runs]
    with torch.no_grad():
        for t in range(length):
            x = torch.stack([r[t] if t < len(r) else pad for r in runs])
            new_states, heads = [], []
            for k in range(model.cfg.n_stages):
                x, memory = model.stage(k)(x, states[k])
                new_states.append(memory)
                heads.append(model.stage(k).action(x))
            states = new_states
            for row, run in enumerate(runs):
                if t < len(run):
                    out[row][0].append(heads[-1][row])
                    out[row][1].append([h[row] for h in heads])
    return out
