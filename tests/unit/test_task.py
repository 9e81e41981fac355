"""The reach task: deterministic from its seed, solved by its expert, hard without memory."""

from __future__ import annotations

import pytest
import torch

from service.training.task import (
    Episodes,
    ReachArm,
    TaskConfig,
    camera_view,
    derive_seed,
    expert,
    make_episodes,
    observe,
    rollout,
)

torch.set_num_threads(1)
TASK = TaskConfig()


class HoldStill:
    """A policy that keeps the arm where it is: the floor any trained policy must beat."""

    def reset(self, batch: int) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, : TASK.joints].unsqueeze(1).expand(-1, TASK.horizon, -1)


def _same(a: Episodes, b: Episodes) -> bool:
    return all(
        torch.equal(getattr(a, field), getattr(b, field))
        for field in ("start", "target_start", "velocity", "visible", "target_noise")
    )


def test_same_seed_same_episodes() -> None:
    assert _same(make_episodes(TASK, 8, 3), make_episodes(TASK, 8, 3))
    assert not _same(make_episodes(TASK, 8, 3), make_episodes(TASK, 8, 4))
    first, second = (
        rollout(TASK, make_episodes(TASK, 8, 3), None),
        rollout(TASK, make_episodes(TASK, 8, 3), None),
    )
    assert torch.equal(first.observations, second.observations)
    assert torch.equal(first.expert_chunks, second.expert_chunks)


def test_derived_seeds_differ_by_purpose_and_index() -> None:
    seeds = {derive_seed(p, 0, i) for p in ("train", "distill") for i in range(50)}
    assert len(seeds) == 100


def test_observation_shape_and_hidden_target() -> None:
    episodes = make_episodes(TASK, 16, 0)
    assert episodes.visible[:, : TASK.cue_steps].all()
    assert not episodes.visible.all()
    t = int(torch.nonzero(~episodes.visible[0])[0])
    obs = observe(TASK, episodes, episodes.start, t)
    assert obs.shape == (16, TASK.observation_dim) and obs.dtype == torch.float32
    j = TASK.joints
    assert torch.all(obs[0, j : 2 * j] == 0) and obs[0, 2 * j] == 0


def test_expert_chunks_in_range_and_expert_solves_the_task() -> None:
    episodes = make_episodes(TASK, 64, 1)
    chunks = expert(TASK, episodes, episodes.start, 0)
    assert chunks.shape == (64, TASK.horizon, TASK.joints)
    assert chunks.abs().max() <= 1.0
    demo = rollout(TASK, episodes, None)
    assert demo.action_error() == 0.0
    assert demo.success(TASK).float().mean() >= 0.95
    idle = rollout(TASK, episodes, HoldStill())
    assert idle.success(TASK).float().mean() < 0.1
    assert idle.action_error() > 0.05


def test_camera_view_turns_with_the_arm_and_keeps_distances() -> None:
    turning = TaskConfig(camera_turn=1.0)
    gen = torch.Generator().manual_seed(0)
    q, offset = torch.rand(32, TASK.joints, generator=gen) * 2 - 1, torch.randn(32, TASK.joints)
    assert torch.equal(camera_view(TASK, q, offset), offset)  # the default camera does not turn
    view = camera_view(turning, q, offset)
    assert torch.allclose(view.norm(dim=1), offset.norm(dim=1), atol=1e-5)
    assert torch.equal(view[:, -1], offset[:, -1])  # an odd joint out stays as it is
    assert torch.allclose(camera_view(turning, torch.zeros_like(q), offset), offset)
    moved = q.clone()
    moved[:, -1] += 0.5  # the last joint turns the first pair's frame by a quarter turn
    turned = camera_view(turning, moved, offset)
    assert not torch.allclose(turned[:, :2], view[:, :2], atol=1e-3)
    assert torch.allclose(turned[:, 2:], view[:, 2:])


def test_a_reach_arm_played_step_by_step_is_the_rollout_of_its_episode() -> None:
    """The demo's robot: driven by the expert's first set-point each step, it visits the same
    states as the batch rollout of the same episode, and the same rule judges its success."""
    seed = derive_seed("demo", 0, 3)
    reference = rollout(TASK, make_episodes(TASK, 1, seed), None)
    arm = ReachArm(TASK, seed)
    while not arm.done:
        assert torch.equal(arm.observation(), reference.observations[0, arm.t])
        arm.apply(expert(TASK, arm.episode, arm.q, arm.t)[0, 0])
    assert torch.equal(torch.cat(arm.errors), reference.tracking_error[0])
    assert arm.success() and arm.success() == bool(reference.success(TASK)[0])


def test_a_reach_arm_without_commands_stays_put_and_fails() -> None:
    arm = ReachArm(TASK, derive_seed("demo", 0, 0))
    start = arm.q.clone()
    assert not arm.success(), "no verdict before the episode is over"
    for _ in range(TASK.steps):
        arm.apply(None)
    assert torch.equal(arm.q, start) and not arm.success()
    with pytest.raises(RuntimeError, match="over"):
        arm.apply(None)
