"""The hosts of a chaos cluster on network namespaces (service/local/netns.py): which process
runs on which host. Light (no torch), so that `actionmesh chaos run` can make the hosts before
it loads anything."""

from __future__ import annotations

from service.model.config import ModelConfig

# The host of Redis, the Sentinels, etcd, S3 and the runner (the robots); the runner runs in it.
MAIN = "main"
# The model a chaos run serves by default: small, so that a run fits a 2-core machine.
SMALL_MODEL = ModelConfig(d_model=64, n_heads=4, n_layers=3, tokens=8, memory_tokens=2, n_stages=3)


def host_names(n_stages: int, replicas: int, coordinators: int) -> list[str]:
    """MAIN first, then each coordinator (named as the LocalCluster names them) and each shard
    replica (stage-K-rR)."""
    names = ["coordinator", *(f"coordinator-{i}" for i in range(1, coordinators))]
    shards = [f"stage-{k}-r{r}" for k in range(n_stages) for r in range(replicas)]
    return [MAIN, *names, *shards]


def host_of(child: str) -> str:
    """The host a LocalCluster child runs on: shard-K-rR on stage-K-rR, a coordinator on its
    own name."""
    return "stage-" + child.removeprefix("shard-") if child.startswith("shard-") else child
