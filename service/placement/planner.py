"""Choose stage boundaries and a node per stage: every node's share fits its memory with
headroom, and the slowest stage is as fast as possible (then the whole step).

Pure: the inventory, the layer costs and each node's speed in, a Plan out. One stage per node
(a stage's leader; its standbys go where memory is left), so a node's cores serve one stage.
For each ordering of nodes considered, a dynamic programme over the layers finds the
boundaries minimising the slowest stage, then the step's total latency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.placement.inventory import MIB, Node
from service.placement.layer_costs import LayerCosts

# A stage call's fixed cost beyond compute and bytes on the wire (gRPC, codec, a LAN round trip).
CALL_OVERHEAD_S = 0.0005
# Orderings of nodes tried at most; beyond it only the fastest (then largest) nodes are used.
MAX_ORDERINGS = 20_000


class NoPlacement(ValueError):
    """No assignment of stages to nodes fits; the message says what is too small."""


@dataclass(frozen=True)
class StagePlacement:
    stage: int
    layer_start: int
    layer_end: int
    node: str
    memory_bytes: int  # weights, stage parts and the shard runtime, before headroom
    limit_bytes: int  # with headroom: the request and limit a pod gets
    compute_s: float
    transfer_s: float
    standbys: tuple[str, ...]

    @property
    def step_s(self) -> float:
        return self.compute_s + self.transfer_s


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlacement, ...]
    nodes_considered: int

    @property
    def boundaries(self) -> tuple[int, ...]:
        """First layer of stages 1..n-1: ModelConfig.stage_boundaries."""
        return tuple(s.layer_start for s in self.stages[1:])

    @property
    def step_s(self) -> float:
        return sum(s.step_s for s in self.stages)

    @property
    def bottleneck_s(self) -> float:
        return max(s.step_s for s in self.stages)


@dataclass(frozen=True)
class _Cost:
    """What one stage costs on one node, for a given layer range."""

    costs: LayerCosts
    overhead_bytes: int
    headroom: float

    def need(self, stage: int, layers: int) -> int:
        return self.costs.stage_bytes(stage, layers) + self.overhead_bytes

    def limit(self, stage: int, layers: int) -> int:
        return math.ceil(self.need(stage, layers) * (1 + self.headroom) / MIB) * MIB

    def fits(self, stage: int, layers: int, node: Node) -> bool:
        return self.limit(stage, layers) <= node.memory_bytes

    def times(self, stage: int, layers: int, node: Node, gflops: float) -> tuple[float, float]:
        compute = layers * self.costs.layer_flops / (gflops * 1e9)
        transfer = self.costs.call_bytes[stage] * 8 / (node.link_mbps * 1e6) + CALL_OVERHEAD_S
        return compute, transfer


def plan_placement(
    nodes: Sequence[Node],
    costs: LayerCosts,
    n_stages: int,
    gflops: Mapping[str, float],
    headroom: float = 0.2,
    overhead_bytes: int = 512 * MIB,
    replicas: int = 2,
) -> Plan:
    """The best plan, or NoPlacement naming the largest layer and the smallest node."""
    if n_stages > len(nodes):
        raise NoPlacement(
            f"{n_stages} stages need at least {n_stages} nodes (one stage per node), the "
            f"inventory has {len(nodes)}: add nodes or plan fewer --stages"
        )
    if n_stages > costs.n_layers:
        raise NoPlacement(
            f"{n_stages} stages need at least {n_stages} layers, the model has {costs.n_layers}"
        )
    cost = _Cost(costs, overhead_bytes, headroom)
    ranked = sorted(nodes, key=lambda n: (-gflops[n.name], -n.memory_bytes, n.name))
    considered = len(ranked)
    while considered > n_stages and math.perm(considered, n_stages) > MAX_ORDERINGS:
        considered -= 1
    best: tuple[tuple[float, float], list[tuple[int, int]], tuple[Node, ...]] | None = None
    for order in itertools.permutations(ranked[:considered], n_stages):
        found = _best_boundaries(order, cost, gflops)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], found[1], order)
    if best is None:
        raise NoPlacement(_why_nothing_fits(nodes, cost, n_stages))
    _, ranges, order = best
    return Plan(_placements(ranges, order, nodes, cost, gflops, replicas), considered)


def _best_boundaries(
    order: Sequence[Node], cost: _Cost, gflops: Mapping[str, float]
) -> tuple[tuple[float, float], list[tuple[int, int]]] | None:
    """(slowest stage, total) and the layer ranges for stages on `order`, or None."""
    n_layers, n_stages = cost.costs.n_layers, len(order)
    # best[k][end]: stages 0..k-1 hold layers [0, end): (slowest, total), previous end.
    inf = (math.inf, math.inf)
    best: list[list[tuple[tuple[float, float], int]]] = [
        [(inf, -1)] * (n_layers + 1) for _ in range(n_stages + 1)
    ]
    best[0][0] = ((0.0, 0.0), -1)
    for k, node in enumerate(order):
        for end in range(k + 1, n_layers - (n_stages - k - 1) + 1):
            for start in range(k, end):
                (slowest, total), _ = best[k][start]
                if slowest == math.inf:
                    continue
                if not cost.fits(k, end - start, node):
                    continue  # fewer layers (a later start) may fit: keep looking
                compute, transfer = cost.times(k, end - start, node, gflops[node.name])
                stage_s = compute + transfer
                score = (max(slowest, stage_s), total + stage_s)
                if score < best[k + 1][end][0]:
                    best[k + 1][end] = (score, start)
    score, _ = best[n_stages][n_layers]
    if score[0] == math.inf:
        return None
    ranges, end = [], n_layers
    for k in range(n_stages, 0, -1):
        start = best[k][end][1]
        ranges.append((start, end))
        end = start
    return score, ranges[::-1]


def _placements(
    ranges: Sequence[tuple[int, int]],
    order: Sequence[Node],
    nodes: Sequence[Node],
    cost: _Cost,
    gflops: Mapping[str, float],
    replicas: int,
) -> tuple[StagePlacement, ...]:
    free = {n.name: n.memory_bytes for n in nodes}
    for k, ((start, end), node) in enumerate(zip(ranges, order, strict=True)):
        free[node.name] -= cost.limit(k, end - start)
    placements = []
    for k, ((start, end), node) in enumerate(zip(ranges, order, strict=True)):
        limit = cost.limit(k, end - start)
        standbys: list[str] = []
        for other in sorted(nodes, key=lambda n: (-free[n.name], n.name)):
            if len(standbys) == replicas - 1:
                break
            if other.name != node.name and free[other.name] >= limit:
                free[other.name] -= limit
                standbys.append(other.name)
        compute, transfer = cost.times(k, end - start, node, gflops[node.name])
        placements.append(
            StagePlacement(
                stage=k,
                layer_start=start,
                layer_end=end,
                node=node.name,
                memory_bytes=cost.need(k, end - start),
                limit_bytes=limit,
                compute_s=compute,
                transfer_s=transfer,
                standbys=tuple(standbys),
            )
        )
    return tuple(placements)


def _why_nothing_fits(nodes: Sequence[Node], cost: _Cost, n_stages: int) -> str:
    largest = max(range(n_stages), key=lambda k: cost.limit(k, 1))
    smallest = min(nodes, key=lambda n: (n.memory_bytes, n.name))
    biggest = max(nodes, key=lambda n: (n.memory_bytes, n.name))
    whole = sum(cost.limit(k, 0) for k in range(n_stages)) + cost.costs.n_layers * math.ceil(
        cost.costs.layer_bytes * (1 + cost.headroom)
    )
    return (
        f"no placement fits: the largest layer (one layer of {cost.costs.layer_bytes / MIB:.0f} "
        f"MiB in stage {largest}, with its stage parts and the shard runtime) needs "
        f"{cost.limit(largest, 1) // MIB} MiB with {cost.headroom:.0%} headroom; the smallest "
        f"node {smallest.name} has {smallest.memory_bytes // MIB} MiB and the largest "
        f"{biggest.name} {biggest.memory_bytes // MIB} MiB; {n_stages} stages need about "
        f"{whole // MIB} MiB in all"
    )
