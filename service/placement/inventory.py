"""The node inventory `actionmesh plan --nodes` reads: what each edge node can hold and how
fast it computes. YAML, one entry per node:

    nodes:
      - name: edge-a            # the Kubernetes node name
        memory_gib: 4           # memory a shard may use on it
        cpus: 4
        gflops: 40              # declared speed; omit it with --measure ("as fast as here")
        link_mbps: 1000         # its link to the coordinator
        accelerators: {}        # extended resources to request, e.g. {"nvidia.com/gpu": 1}
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MIB = 1024 * 1024


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    memory_gib: float = Field(gt=0)
    cpus: int = Field(2, ge=1)
    gflops: float | None = Field(None, gt=0)
    link_mbps: float = Field(1000.0, gt=0)
    accelerators: dict[str, int] = Field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024 * MIB)


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: list[Node] = Field(min_length=1)


class BadInventory(ValueError):
    """The inventory file cannot be read or does not describe nodes; one line."""


def load_inventory(path: Path) -> Inventory:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadInventory(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadInventory(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    try:
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise BadInventory(f"{path}: {problems}") from exc
    names = [node.name for node in inventory.nodes]
    if len(set(names)) != len(names):
        raise BadInventory(f"{path}: node names repeat: {', '.join(sorted(names))}")
    return inventory
