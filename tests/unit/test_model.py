"""The model family in one process: config, stages, recurrence, student and weights on disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.model.stage import Stage
from service.model.student import Student

pytestmark = pytest.mark.timeout(60)

SMALL = ModelConfig(d_model=32, n_heads=4, n_layers=3, tokens=4, memory_tokens=2, n_stages=3)
BATCH = 3


@pytest.fixture(scope="module")
def model() -> ActionModel:
    return ActionModel(SMALL)


def observations(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, SMALL.observation_dim, generator=generator)


@torch.no_grad()
def step_stage_by_stage(
    stages: list[Stage], obs: torch.Tensor, states: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What the cluster does: each stage on its own, memory passed in and out explicitly."""
    x, new_states = obs, []
    for stage, memory in zip(stages, states, strict=True):
        x, new_memory = stage.forward(x, memory)
        new_states.append(new_memory)
    return stages[-1].action(x), new_states


def rollout(
    model: ActionModel, steps: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Actions of each step and the final states, starting from fresh memory."""
    states = model.fresh_states(steps[0].shape[0])
    actions = []
    for obs in steps:
        action, states = model.step(obs, states)
        actions.append(action)
    return actions, states


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_layers", "n_stages"),
    [(1, 1), (3, 3), (6, 3), (7, 3), (8, 3), (10, 4), (5, 2), (6, 1), (11, 5)],
)
def test_layer_range_partitions_layers_contiguously_and_evenly(
    n_layers: int, n_stages: int
) -> None:
    cfg = ModelConfig(n_layers=n_layers, n_stages=n_stages)
    ranges = [cfg.layer_range(k) for k in range(n_stages)]

    assert ranges[0][0] == 0
    assert ranges[-1][1] == n_layers
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start, ranges
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 1, ranges
    assert max(sizes) - min(sizes) <= 1, ranges
    assert sum(sizes) == n_layers


@pytest.mark.parametrize("stage", [-1, 3, 10])
def test_layer_range_refuses_a_stage_outside_the_model(stage: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        SMALL.layer_range(stage)


def test_stages_hold_the_blocks_of_their_layer_range() -> None:
    cfg = ModelConfig(d_model=16, n_heads=2, n_layers=7, tokens=2, memory_tokens=1, n_stages=3)
    built = ActionModel(cfg)
    for k in range(cfg.n_stages):
        start, end = cfg.layer_range(k)
        assert len(built.stage(k).blocks) == end - start
    assert built.stage(0).embed is not None
    assert all(built.stage(k).embed is None for k in range(1, cfg.n_stages))


def test_config_refuses_d_model_not_divisible_by_n_heads() -> None:
    with pytest.raises(ValidationError, match="not divisible by n_heads"):
        ModelConfig(d_model=30, n_heads=4)


def test_config_refuses_more_stages_than_layers() -> None:
    with pytest.raises(ValidationError, match="exceeds n_layers"):
        ModelConfig(n_layers=2, n_stages=3)


def test_config_refuses_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelConfig(d_modle=32)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="frozen"):
        SMALL.seed = 5  # type: ignore[misc]


# --- stages and the whole model -----------------------------------------------------------


def test_stages_run_one_by_one_equal_the_whole_model_step(model: ActionModel) -> None:
    stages = [model.stage(k) for k in range(SMALL.n_stages)]
    states_ref = model.fresh_states(BATCH)
    states_split = [s.clone() for s in states_ref]
    for t in range(3):  # several steps, so carried memory is compared too
        obs = observations(BATCH, seed=t)
        action_ref, states_ref = model.step(obs, states_ref)
        action_split, states_split = step_stage_by_stage(stages, obs, states_split)
        assert torch.equal(action_split, action_ref)
        for got, want in zip(states_split, states_ref, strict=True):
            assert torch.equal(got, want)


def test_step_shapes(model: ActionModel) -> None:
    states = model.fresh_states(BATCH)
    assert [s.shape for s in states] == [(BATCH, SMALL.memory_tokens, SMALL.d_model)] * 3
    action, new_states = model.step(observations(BATCH, seed=0), states)
    assert action.shape == (BATCH, SMALL.horizon, SMALL.joints)
    assert action.abs().max() <= 1.0
    assert [s.shape for s in new_states] == [s.shape for s in states]


def test_same_observation_after_different_histories_gives_different_actions(
    model: ActionModel,
) -> None:
    final = observations(1, seed=99)
    _, states_a = rollout(model, [observations(1, seed=1), observations(1, seed=2)])
    _, states_b = rollout(model, [observations(1, seed=3), observations(1, seed=4)])

    action_a, _ = model.step(final, states_a)
    action_b, _ = model.step(final, states_b)
    action_fresh, _ = model.step(final, model.fresh_states(1))

    assert not torch.allclose(action_a, action_b, atol=1e-4)
    assert not torch.allclose(action_a, action_fresh, atol=1e-4)


def test_step_does_not_modify_the_states_it_is_given(model: ActionModel) -> None:
    states = model.fresh_states(BATCH)
    before = [s.clone() for s in states]
    model.step(observations(BATCH, seed=0), states)
    for got, want in zip(states, before, strict=True):
        assert torch.equal(got, want)


def test_batch_of_sessions_equals_each_session_alone(model: ActionModel) -> None:
    per_session = [[observations(1, seed=10 * s + t) for t in range(3)] for s in range(BATCH)]
    batched = [torch.cat([per_session[s][t] for s in range(BATCH)]) for t in range(3)]

    batch_actions, batch_states = rollout(model, batched)
    for s in range(BATCH):
        alone_actions, alone_states = rollout(model, per_session[s])
        for t in range(3):
            torch.testing.assert_close(
                batch_actions[t][s : s + 1], alone_actions[t], atol=1e-5, rtol=0
            )
        for got, want in zip(batch_states, alone_states, strict=True):
            torch.testing.assert_close(got[s : s + 1], want, atol=1e-5, rtol=0)
    # The sessions had different histories, so the batch really held different rows.
    assert not torch.allclose(batch_actions[-1][0], batch_actions[-1][1], atol=1e-4)


# --- deterministic init -------------------------------------------------------------------


def test_same_seed_gives_same_weights_and_version_whatever_the_global_rng() -> None:
    torch.manual_seed(123)
    first = ActionModel(SMALL)
    torch.manual_seed(456)
    second = ActionModel(SMALL)

    first_tensors, second_tensors = first.state_dict(), second.state_dict()
    assert first_tensors.keys() == second_tensors.keys()
    for name, tensor in first_tensors.items():
        assert torch.equal(tensor, second_tensors[name]), name
    assert weights.model_version(first) == weights.model_version(second)


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    ActionModel(SMALL)
    assert torch.equal(torch.rand(4), expected)


def test_another_seed_gives_other_weights_and_another_version(model: ActionModel) -> None:
    other = ActionModel(SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert not torch.equal(other.stage(0).initial_memory, model.stage(0).initial_memory)
    assert weights.model_version(other) != weights.model_version(model)


def test_version_changes_with_the_weights_and_with_the_config(model: ActionModel) -> None:
    version = weights.model_version(model)
    assert version.startswith("m-")

    other_config = ActionModel(SMALL.model_copy(update={"horizon": SMALL.horizon + 1}))
    assert weights.model_version(other_config) != version

    nudged = ActionModel(SMALL)
    with torch.no_grad():
        nudged.stage(2).head.out.bias[0] += 1e-3
    assert weights.model_version(nudged) != version


# --- weights on disk ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(model: ActionModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("weights")
    info = weights.save(model, directory)
    return directory, info.version


def test_weights_dir_holds_only_the_manifest_and_safetensors(
    model: ActionModel, saved: tuple[Path, str]
) -> None:
    directory, version = saved
    names = sorted(p.name for p in directory.iterdir())
    expected = sorted(
        [weights.MANIFEST, weights.STUDENT_FILE]
        + [weights.stage_file(k) for k in range(SMALL.n_stages)]
    )
    assert names == expected
    assert all(n == "model.json" or n.endswith(".safetensors") for n in names)

    manifest = json.loads((directory / "model.json").read_text())
    assert manifest["version"] == version == weights.model_version(model)
    assert ModelConfig(**manifest["config"]) == SMALL


def test_weights_files_are_plain_safetensors(model: ActionModel, saved: tuple[Path, str]) -> None:
    directory, _ = saved
    modules: dict[str, torch.nn.Module] = {
        weights.stage_file(k): model.stage(k) for k in range(SMALL.n_stages)
    }
    modules[weights.STUDENT_FILE] = model.student
    for filename, module in modules.items():
        expected = module.state_dict()
        with safe_open(str(directory / filename), framework="pt") as f:
            assert set(f.keys()) == set(expected)
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                assert torch.equal(f.get_tensor(name), expected[name]), (filename, name)


def test_load_model_gives_identical_outputs(model: ActionModel, saved: tuple[Path, str]) -> None:
    directory, version = saved
    loaded, info = weights.load_model(directory)
    assert info.version == version
    assert info.config == SMALL
    assert weights.model_version(loaded) == version
    assert not loaded.training

    steps = [observations(BATCH, seed=t) for t in range(3)]
    want_actions, want_states = rollout(model, steps)
    got_actions, got_states = rollout(loaded, steps)
    for got, want in zip(got_actions + got_states, want_actions + want_states, strict=True):
        assert torch.equal(got, want)

    obs, state = observations(BATCH, seed=5), model.student.fresh_state(BATCH)
    with torch.no_grad():
        for got, want in zip(loaded.student(obs, state), model.student(obs, state), strict=True):
            assert torch.equal(got, want)


def test_load_stage_gives_identical_outputs(model: ActionModel, saved: tuple[Path, str]) -> None:
    directory, version = saved
    loaded: list[Stage] = []
    for k in range(SMALL.n_stages):
        stage, info = weights.load_stage(directory, k)
        assert info.version == version
        assert stage.index == k
        assert not stage.training
        loaded.append(stage)

    obs = observations(BATCH, seed=8)
    states = model.fresh_states(BATCH)
    assert all(
        torch.equal(s.fresh_memory(BATCH), want) for s, want in zip(loaded, states, strict=True)
    )
    want_action, want_states = model.step(obs, states)
    got_action, got_states = step_stage_by_stage(loaded, obs, states)
    assert torch.equal(got_action, want_action)
    for got, want in zip(got_states, want_states, strict=True):
        assert torch.equal(got, want)


# --- student ------------------------------------------------------------------------------


def test_student_shapes_and_recurrence() -> None:
    student = Student(SMALL)
    state = student.fresh_state(BATCH)
    assert state.shape == (BATCH, SMALL.student_hidden)

    with torch.no_grad():
        action, new_state = student(observations(BATCH, seed=0), state)
        again, _ = student(observations(BATCH, seed=0), new_state)
    assert action.shape == (BATCH, SMALL.horizon, SMALL.joints)
    assert new_state.shape == (BATCH, SMALL.student_hidden)
    assert action.abs().max() <= 1.0
    assert not torch.equal(new_state, state)
    assert not torch.allclose(again, action, atol=1e-4)
