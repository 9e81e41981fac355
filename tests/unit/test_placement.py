"""The placement planner on heterogeneous inventories: every stage fits its node with
headroom, faster nodes take more layers, and an impossible inventory says what is too small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from service.cli import plan as plan_cli
from service.model.config import ModelConfig
from service.placement.inventory import MIB, BadInventory, Node, load_inventory
from service.placement.layer_costs import layer_costs
from service.placement.planner import NoPlacement, plan_placement
from service.runtime.command_settings import PlanSettings

# About 48 MiB per layer (d_model 1024): big enough that 1, 2 and 4 GiB nodes differ.
BIG = ModelConfig(d_model=1024, n_heads=16, n_layers=24, tokens=32, memory_tokens=4)
COSTS = layer_costs(BIG)


def node(name: str, gib: float, gflops: float = 40.0) -> Node:
    return Node(name=name, memory_gib=gib, gflops=gflops)


def speeds(nodes: list[Node]) -> dict[str, float]:
    return {n.name: n.gflops or 0.0 for n in nodes}


def test_one_two_and_four_gib_nodes_each_get_a_stage_that_fits() -> None:
    nodes = [node("one", 1), node("two", 2), node("four", 4)]
    plan = plan_placement(nodes, COSTS, 3, speeds(nodes), headroom=0.2)
    assert [s.layer_start for s in plan.stages] == [0, *plan.boundaries]
    assert plan.stages[-1].layer_end == BIG.n_layers
    memory = {n.name: n.memory_bytes for n in nodes}
    for s in plan.stages:
        assert s.limit_bytes >= s.memory_bytes * 1.2
        assert s.limit_bytes <= memory[s.node]
    assert sorted(s.node for s in plan.stages) == ["four", "one", "two"]


def test_a_faster_node_takes_more_layers_and_the_slowest_stage_is_minimised() -> None:
    nodes = [node("slow", 4, gflops=10), node("fast", 4, gflops=40)]
    plan = plan_placement(nodes, COSTS, 2, speeds(nodes))
    layers = {s.node: s.layer_end - s.layer_start for s in plan.stages}
    assert layers["fast"] > layers["slow"]
    # No other split or order on these two nodes has a faster slowest stage (compute only:
    # a stage call's transfer adds well under 10 ms here).
    for first in range(1, BIG.n_layers):
        for order in (nodes, nodes[::-1]):
            slowest = max(
                layers * COSTS.layer_flops / ((n.gflops or 1) * 1e9)
                for layers, n in zip((first, BIG.n_layers - first), order, strict=True)
            )
            assert plan.bottleneck_s <= slowest + 0.01


def test_a_node_too_small_for_any_layer_is_left_out() -> None:
    nodes = [node("tiny", 0.25), node("two", 2), node("four", 4)]
    plan = plan_placement(nodes, COSTS, 2, speeds(nodes))
    assert "tiny" not in {s.node for s in plan.stages}
    assert all("tiny" not in s.standbys for s in plan.stages)


def test_more_stages_than_nodes_is_a_clear_error() -> None:
    nodes = [node("two", 2), node("four", 4)]
    with pytest.raises(NoPlacement, match="3 stages need at least 3 nodes"):
        plan_placement(nodes, COSTS, 3, speeds(nodes))


def test_an_impossible_inventory_names_the_largest_layer_and_the_smallest_node() -> None:
    nodes = [node("half", 0.5), node("small", 0.6), node("smallest", 0.4)]
    with pytest.raises(NoPlacement) as caught:
        plan_placement(nodes, COSTS, 3, speeds(nodes))
    message = str(caught.value)
    assert "largest layer" in message and "smallest node smallest has 409 MiB" in message
    assert f"{COSTS.layer_bytes / MIB:.0f} MiB" in message


def test_standbys_go_where_memory_is_left_and_never_on_the_leaders_node() -> None:
    nodes = [node("a", 4), node("b", 4), node("c", 4)]
    plan = plan_placement(nodes, COSTS, 3, speeds(nodes), replicas=2)
    for s in plan.stages:
        assert s.node not in s.standbys and len(s.standbys) == 1


def test_inventory_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "nodes.yaml"
    bad.write_text("nodes:\n  - {name: a, memory_gib: -1}\n")
    with pytest.raises(BadInventory, match=r"nodes\.0\.memory_gib"):
        load_inventory(bad)
    bad.write_text("nodes: [\n")
    with pytest.raises(BadInventory, match="not valid YAML"):
        load_inventory(bad)


def test_plan_command_prints_patches_that_apply_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(
        yaml.safe_dump(
            {
                "nodes": [
                    {"name": "one", "memory_gib": 1, "gflops": 20},
                    {"name": "two", "memory_gib": 2, "gflops": 40},
                    {"name": "four", "memory_gib": 4, "gflops": 80, "cpus": 8},
                ]
            }
        )
    )
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(BIG.model_dump()))
    settings = PlanSettings(nodes=nodes, model=model, json_output=True)
    assert plan_cli.main(settings) == 0
    result = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML
    stages = result["plan"]["stages"]
    for patch, stage in zip(result["patches"], stages, strict=True):
        assert patch["metadata"]["name"] == f"shard-{stage['stage']}"
        spec = patch["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {f"actionmesh.io/stage-{stage['stage']}": "serve"}
        assert spec["containers"][0]["resources"]["limits"]["memory"] == f"{stage['limit_mib']}Mi"
    assert f"kubectl label node {stages[0]['node']} actionmesh.io/stage-0=serve" in " ".join(
        result["labels"]
    )


def test_plan_command_without_speeds_asks_for_gflops_or_measure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n  - {name: a, memory_gib: 4}\n")
    assert plan_cli.main(PlanSettings(nodes=nodes, stages=1)) == 2
    assert "--measure" in capsys.readouterr().err


def test_measure_takes_nodes_without_gflops_as_fast_as_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n  - {name: a, memory_gib: 2}\n  - {name: b, memory_gib: 2}\n")
    small = ModelConfig(d_model=32, n_heads=2, n_layers=4, tokens=4, memory_tokens=1, n_stages=2)
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"version": "m-x", "config": small.model_dump()}))
    settings = PlanSettings(nodes=nodes, model=model, measure=True, json_output=True)
    assert plan_cli.main(settings) == 0
    result = json.loads(capsys.readouterr().out)
    measured = result["plan"]["measured"]
    assert measured["layer_ms"] > 0
    for stage in result["plan"]["stages"]:
        assert stage["gflops"] == pytest.approx(measured["local_gflops"], abs=0.01)
    # Two layers per stage on equal nodes: each stage computes for two measured layers.
    for stage in result["plan"]["stages"]:
        assert stage["layers"][1] - stage["layers"][0] == 2
        assert stage["compute_ms"] == pytest.approx(2 * measured["layer_ms"], rel=0.05)
