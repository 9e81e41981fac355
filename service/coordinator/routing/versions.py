"""The versions a coordinator can serve, kept as an immutable snapshot off the step path.

Whenever the routing table or the desired version changes, a background thread vets the
versions newly offered by every stage (one `Info` call to one of its replicas: is its
interface this coordinator's?) and publishes a new `VersionSnapshot`. A step only reads the
latest snapshot; a version not vetted yet is simply not whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable

from service.coordinator.routing.stage_client import StageTransport
from service.coordinator.routing.version_choice import (
    VersionSnapshot,
    offered_by_every_stage,
    serving_version,
    start_version,
)
from service.coordinator.step_errors import Unavailable
from service.model.config import ModelConfig
from service.runtime import metrics
from state.leadership import ReplicaInfo, RoutingTable, StageView

log = logging.getLogger(__name__)

# What the coordinator relies on in a model: the rest (sizes inside stages, the state's shape)
# only the shards see, and a version switch starts every stage's state afresh.
INTERFACE = ("observation_dim", "n_stages", "joints", "horizon")

INFO_TIMEOUT_S = 0.5
RETRY_UNKNOWN_S = 5.0  # a version whose Info failed is asked again after this long

Connect = Callable[[ReplicaInfo], StageTransport]


class VersionCatalog:
    def __init__(self, table: RoutingTable, model: ModelConfig, connect: Connect) -> None:
        self.table, self.model, self.connect = table, model, connect
        self._vetted: dict[str, bool] = {}  # version -> its interface matches
        self._retry_at: dict[str, float] = {}  # Info failed: asked again from then
        self._snapshot = VersionSnapshot(
            whole=frozenset(), offered=frozenset(), desired=None, serving=None
        )
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-catalog", daemon=True)

    def start(self) -> VersionSnapshot:
        """Vet what is offered now (so the first steps find it), then follow changes."""
        self.refresh()
        self.table.subscribe(lambda _views: self._changed.set())
        self._thread.start()
        return self._snapshot

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        self._thread.join(timeout=2)

    def snapshot(self) -> VersionSnapshot:
        return self._snapshot

    def refresh(self) -> None:
        """Vet the versions every stage offers that are not vetted yet; publish a snapshot."""
        views, n = self.table.snapshot(), self.model.n_stages
        common = offered_by_every_stage(views, n)
        for version in sorted(common - self._vetted.keys()):
            if time.monotonic() >= self._retry_at.get(version, 0.0):
                self._vet(version, views)
        whole = frozenset(v for v in common if self._vetted.get(v))
        metrics.publish_model_versions(whole)
        snapshot = VersionSnapshot(
            whole=whole,
            offered=frozenset(r.model_version for v in views.values() for r in v.replicas.values()),
            desired=self.table.desired_version(),
            desired_revision=self.table.desired_revision(),
            serving=serving_version(views, n),
            last_start=self._snapshot.last_start,
        )
        if (start := start_version(snapshot)) is not None:
            snapshot = dataclasses.replace(snapshot, last_start=start)
        self._snapshot = snapshot

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(timeout=RETRY_UNKNOWN_S)
            self._changed.clear()
            if not self._stopping.is_set():
                self.refresh()

    def _vet(self, version: str, views: dict[int, StageView]) -> None:
        replica = next(
            (
                r
                for view in views.values()
                for r in view.replicas.values()
                if r.model_version == version
            ),
            None,
        )
        if replica is None:
            return
        transport = self.connect(replica)
        try:
            config = json.loads(transport.info(INFO_TIMEOUT_S).model_config_json)
            if not isinstance(config, dict):
                raise ValueError(f"model config is not an object: {config!r}")
        except (Unavailable, ValueError) as exc:  # unreachable, or an unreadable reply
            log.warning("model=%s: Info of %s failed: %s", version, replica.replica_id, exc)
            self._retry_at[version] = time.monotonic() + RETRY_UNKNOWN_S
            return
        finally:
            transport.close()
        # Only the interface is compared: a version may well have config fields this
        # coordinator does not know.
        differs = [f for f in INTERFACE if config.get(f) != getattr(self.model, f)]
        if differs:
            log.error(
                "model=%s is not used: its %s differ from this coordinator's model",
                version,
                differs,
            )
        self._vetted[version] = not differs
