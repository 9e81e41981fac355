"""Which model version each session's step runs on, as the routing table and the desired
version change: the I/O around router.session_version."""

from __future__ import annotations

import json
import logging
import threading
import time

import grpc

from service.coordinator.routing.replica_choice import session_version
from service.coordinator.routing.stage_client import StageClient
from service.model.config import ModelConfig
from state.leadership import RoutingTable

log = logging.getLogger(__name__)

# What the coordinator relies on in a model: the rest (sizes inside stages, the state's shape)
# only the shards see, and a version switch starts every stage's state afresh.
INTERFACE = ("observation_dim", "n_stages", "joints", "horizon")

INFO_TIMEOUT_S = 0.5
RETRY_UNKNOWN_S = 5.0  # a version whose Info failed is not used, nor asked again, for this long


class VersionCatalog:
    def __init__(self, table: RoutingTable, model: ModelConfig) -> None:
        self.table, self.model = table, model
        self._usable: dict[str, bool] = {}
        self._unknown_until: dict[str, float] = {}  # Info failed: not asked again before
        self._lock = threading.Lock()

    def for_session(self, current: str | None) -> str | None:
        """The version to run a step of a session on `current` (None: no history yet). With no
        whole pipeline to run it on, a session stays on its own version, served degraded."""
        chosen = session_version(
            self.table.snapshot(),
            self.model.n_stages,
            self.table.desired_version(),
            current,
            self.usable,
        )
        return current if chosen is None else chosen

    def usable(self, version: str) -> bool:
        """A version whose interface matches this coordinator's model; asked once per version
        (an Info call to one of its replicas), remembered once answered."""
        with self._lock:
            known = self._usable.get(version)
            if known is None and time.monotonic() < self._unknown_until.get(version, 0.0):
                return False
        if known is not None:
            return known
        replica = next(
            (
                r
                for view in self.table.snapshot().values()
                for r in view.replicas.values()
                if r.model_version == version
            ),
            None,
        )
        if replica is None:
            return False
        client = StageClient(replica.stage, replica.address)
        try:
            config = json.loads(client.info(INFO_TIMEOUT_S).model_config_json)
            if not isinstance(config, dict):
                raise ValueError(f"model config is not an object: {config!r}")
        except (grpc.RpcError, ValueError) as exc:  # unreachable, or an unreadable reply
            log.warning("model=%s: Info of %s failed: %s", version, replica.replica_id, exc)
            with self._lock:
                self._unknown_until[version] = time.monotonic() + RETRY_UNKNOWN_S
            return False
        finally:
            client.close()
        # Only the interface is compared: a version may well have config fields this
        # coordinator does not know.
        differs = [f for f in INTERFACE if config.get(f) != getattr(self.model, f)]
        if differs:
            log.error(
                "model=%s is not used: its %s differ from this coordinator's model",
                version,
                differs,
            )
        with self._lock:
            self._usable[version] = not differs
        return not differs
