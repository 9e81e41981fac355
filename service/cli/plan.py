"""`actionmesh plan`: where each stage goes, given a node inventory and a model.

Prints a table, the plan as YAML, the kubectl labels and kustomize patches that apply it, and
the command that builds a model with the planned stage boundaries (weights are per stage, so
a split is chosen before training or creating a version, not applied to existing weights)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.model.config import ModelConfig
from service.placement.inventory import MIB, BadInventory, Inventory, load_inventory
from service.placement.layer_costs import layer_costs, measure_layer_seconds
from service.placement.plan_report import (
    as_yaml,
    as_yaml_stream,
    kustomize_patches,
    label_commands,
    plan_record,
    table,
)
from service.placement.planner import NoPlacement, plan_placement
from service.runtime.command_settings import PlanSettings


class BadModel(ValueError):
    """--model names nothing that describes a model config; one line."""


def load_model_config(path: Path | None) -> ModelConfig:
    """A weights dir, its model.json ({"config": {...}}) or a file of config fields."""
    if path is None:
        return ModelConfig()
    file = path / "model.json" if path.is_dir() else path
    try:
        data = yaml.safe_load(file.read_text())  # JSON is YAML
    except OSError as exc:
        raise BadModel(f"cannot read --model {file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadModel(f"--model {file} is neither JSON nor YAML") from exc
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise BadModel(f"--model {file}: {problems}") from exc


def node_speeds(inventory: Inventory, local_gflops: float | None) -> dict[str, float]:
    speeds = {}
    for node in inventory.nodes:
        gflops = node.gflops or local_gflops
        if gflops is None:
            raise BadInventory(
                f"node {node.name}: declare gflops, or run with --measure to take it as fast "
                "as this machine"
            )
        speeds[node.name] = gflops
    return speeds


def build(settings: PlanSettings) -> dict[str, Any]:
    inventory = load_inventory(settings.nodes)
    cfg = load_model_config(settings.model)
    n_stages = settings.stages or cfg.n_stages
    costs = layer_costs(cfg.model_copy(update={"n_stages": n_stages, "stage_boundaries": None}))
    local_gflops = layer_s = None
    if settings.measure:
        layer_s = measure_layer_seconds(cfg)
        local_gflops = costs.layer_flops / layer_s / 1e9
    speeds = node_speeds(inventory, local_gflops)
    plan = plan_placement(
        inventory.nodes,
        costs,
        n_stages,
        speeds,
        headroom=settings.headroom,
        overhead_bytes=settings.shard_overhead_mib * MIB,
        replicas=settings.replicas,
    )
    record = plan_record(plan, cfg, speeds)
    if layer_s is not None:
        record["measured"] = {
            "layer_ms": round(layer_s * 1e3, 4),
            "local_gflops": round(local_gflops or 0.0, 2),
        }
    boundaries = ",".join(str(b) for b in plan.boundaries)
    return {
        "plan": record,
        "table": table(plan, speeds),
        "labels": label_commands(plan),
        "patches": kustomize_patches(plan, inventory.nodes),
        "model_command": f"actionmesh train --d-model {cfg.d_model} --n-heads {cfg.n_heads} "
        f"--n-layers {cfg.n_layers} --tokens {cfg.tokens} --memory-tokens {cfg.memory_tokens} "
        f"--stages {n_stages} --stage-boundaries {boundaries}",
    }


def main(settings: PlanSettings) -> int:
    try:
        result = build(settings)
    except (BadInventory, BadModel) as exc:
        print(f"actionmesh plan: {exc}", file=sys.stderr)
        return 2
    except NoPlacement as exc:
        print(f"actionmesh plan: {exc}", file=sys.stderr)
        return 1
    if settings.json_output:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}))
        return 0
    print(result["table"])
    print("\n# plan")
    print(as_yaml(result["plan"]), end="")
    print("\n# label the nodes each stage may run on")
    print("\n".join(result["labels"]))
    print("\n# kustomize patches (e.g. deploy/overlays/k3s-edge/placement.yaml)")
    print(as_yaml_stream(result["patches"]), end="")
    print("\n# build the model with this split")
    print(result["model_command"])
    return 0
