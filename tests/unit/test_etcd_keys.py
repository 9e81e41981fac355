"""Pure parts of the etcd backend: URL parsing and the stage views read from keys."""

from __future__ import annotations

import pytest

from state.etcd_keys import stage_views
from state.etcd_url import parse_etcd_url
from state.leadership import ReplicaInfo, StageView


def test_parse_etcd_url() -> None:
    assert parse_etcd_url("etcd://127.0.0.1:2379") == [("127.0.0.1", 2379)]
    assert parse_etcd_url("etcd://h1:1,h2:2,h3") == [("h1", 1), ("h2", 2), ("h3", 2379)]
    assert parse_etcd_url("etcd://[::1]:23790/") == [("::1", 23790)]
    for bad in ("redis://h:1", "etcd://", "etcd://h:port", "etcd://h:1/x", "h:1"):
        with pytest.raises(ValueError, match="etcd URL"):
            parse_etcd_url(bad)


def test_stage_views_from_keys() -> None:
    prefix = "/actionmesh/c/stages/"
    a, b = ReplicaInfo(0, "a", "h:1", "v1", 7), ReplicaInfo(0, "b", "h:2", "v1", 8)
    entries = {
        f"{prefix}0/leader": a.to_json(),
        f"{prefix}0/replicas/b": b.to_json(),
        f"{prefix}1/replicas/x": b"not json",
        f"{prefix}2/other/thing": a.to_json(),
    }
    assert stage_views(prefix, entries) == {0: StageView(0, a, {"a": a, "b": b})}
