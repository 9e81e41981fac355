"""How a plan is printed: a table for people, YAML for the record, kustomize patches that put
each stage's StatefulSet on its nodes with the planned resources."""

from __future__ import annotations

from typing import Any

import yaml

from service.model.config import ModelConfig
from service.placement.inventory import MIB, Node
from service.placement.planner import Plan

STAGE_LABEL = "actionmesh.io/stage-{k}"  # the node label a stage's pods select
LABEL_VALUE = "serve"


def statefulset_name(stage: int) -> str:
    """The shard StatefulSet of a stage in deploy/base (shard-0, shard-1, ...)."""
    return f"shard-{stage}"


def plan_record(plan: Plan, cfg: ModelConfig, gflops: dict[str, float]) -> dict[str, Any]:
    return {
        "model": {
            "n_layers": cfg.n_layers,
            "n_stages": len(plan.stages),
            "stage_boundaries": list(plan.boundaries),
        },
        "stages": [
            {
                "stage": s.stage,
                "layers": [s.layer_start, s.layer_end],
                "node": s.node,
                "gflops": gflops[s.node],
                "memory_mib": round(s.memory_bytes / MIB, 1),
                "limit_mib": s.limit_bytes // MIB,
                "compute_ms": round(s.compute_s * 1e3, 3),
                "transfer_ms": round(s.transfer_s * 1e3, 3),
                "standbys": list(s.standbys),
            }
            for s in plan.stages
        ],
        "expected_step_ms": round(plan.step_s * 1e3, 3),
        "slowest_stage_ms": round(plan.bottleneck_s * 1e3, 3),
        "nodes_considered": plan.nodes_considered,
    }


def table(plan: Plan, gflops: dict[str, float]) -> str:
    rows = [("stage", "layers", "node", "GFLOP/s", "memory MiB", "limit MiB", "ms", "standbys")]
    for s in plan.stages:
        rows.append(
            (
                str(s.stage),
                f"{s.layer_start}-{s.layer_end - 1}",
                s.node,
                f"{gflops[s.node]:g}",
                f"{s.memory_bytes / MIB:.0f}",
                str(s.limit_bytes // MIB),
                f"{s.step_s * 1e3:.2f}",
                ",".join(s.standbys) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"expected step latency {plan.step_s * 1e3:.2f} ms (slowest stage "
        f"{plan.bottleneck_s * 1e3:.2f} ms); stage_boundaries {list(plan.boundaries)}"
    )
    return "\n".join(lines)


def kustomize_patches(plan: Plan, nodes: list[Node]) -> list[dict[str, Any]]:
    """One strategic-merge patch per stage StatefulSet: replicas, node selector, resources."""
    by_name = {n.name: n for n in nodes}
    patches = []
    for s in plan.stages:
        node = by_name[s.node]
        limit = f"{s.limit_bytes // MIB}Mi"
        resources = {
            "requests": {"memory": limit, "cpu": "1"},
            "limits": {"memory": limit, "cpu": str(node.cpus), **node.accelerators},
        }
        patches.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": statefulset_name(s.stage)},
                "spec": {
                    "replicas": 1 + len(s.standbys),
                    "template": {
                        "spec": {
                            "nodeSelector": {STAGE_LABEL.format(k=s.stage): LABEL_VALUE},
                            "containers": [{"name": "shard", "resources": resources}],
                        }
                    },
                },
            }
        )
    return patches


def label_commands(plan: Plan) -> list[str]:
    """kubectl commands that label each stage's nodes (leader's and standbys')."""
    return [
        f"kubectl label node {node} {STAGE_LABEL.format(k=s.stage)}={LABEL_VALUE} --overwrite"
        for s in plan.stages
        for node in (s.node, *s.standbys)
    ]


def as_yaml(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def as_yaml_stream(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)
