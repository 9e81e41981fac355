"""Every actionmesh_* metric family has an owner (shared, coordinator, shard or client), and
/metrics of a role shows its own and the shared families, never another role's."""

from __future__ import annotations

import importlib

import pytest
from prometheus_client import REGISTRY

from service.runtime import exposition

# Every module that defines metrics (they register at import).
METRIC_MODULES = [
    "service.runtime.metrics",
    "state.store_metrics",
    "checkpoint.s3_blobstore",
    "actionmesh_client.session_client",
    "actionmesh_client.action_buffer",
]


def families() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return {f.name for f in REGISTRY.collect() if f.name.startswith("actionmesh_")}


def test_every_family_has_exactly_one_owner() -> None:
    owners = [exposition.SHARED, *exposition.BY_ROLE.values(), exposition.CLIENT]
    for name in families():
        assert sum(name in owner for owner in owners) == 1, f"{name}: owned by none or several"
    for owner in owners:
        assert owner <= families(), f"named but not defined: {sorted(owner - families())}"


@pytest.mark.parametrize("role", ["coordinator", "shard"])
def test_a_role_exposes_its_own_and_the_shared_families(role: exposition.Role) -> None:
    families()
    shown = {f.name for f in exposition.registry_for(role).collect()}
    ours = {n for n in shown if n.startswith("actionmesh_")}
    assert ours == exposition.SHARED | exposition.BY_ROLE[role]
    assert "python_info" in shown  # families not ours always show
