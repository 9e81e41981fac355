"""A coordinator's whole step path in this process: real stage modules behind in-process
transports (with injectable faults), the real router, bans, batcher, pipeline, version
catalog, admission and engine, over the in-memory session store. No process, no socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fallback.admission import AdmissionConfig, AdmissionController
from fallback.policy import PolicyConfig
from fallback.priority import Priority
from service.coordinator.admission_gate import AdmissionGate
from service.coordinator.assets import ModelAssets, VersionAssets
from service.coordinator.batcher import DynamicBatcher
from service.coordinator.engine import Durability, SessionEngine, SessionLimits
from service.coordinator.pipeline import Pipeline
from service.coordinator.routing.in_process_stage import Fault, InProcessStage
from service.coordinator.routing.replica_choice import BanPolicy
from service.coordinator.routing.stage_router import StageRouter
from service.coordinator.routing.versions import VersionCatalog
from service.coordinator.serve_modes import ServeModes
from service.coordinator.session_cache import SessionCache
from service.model.action_model import ActionModel
from service.model.student import Student
from service.proto import session_pb2, tensor_codec
from state.leadership import ReplicaInfo, StageView
from state.memory_store import MemorySessionStore


class MutableRoutingTable:
    """A RoutingTable a test edits: replicas come and go, the desired version moves."""

    def __init__(self) -> None:
        self._views: dict[int, StageView] = {}
        self._desired: str | None = None
        self._desired_revision = 0
        self._subscribers: list[Callable[[dict[int, StageView]], None]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    @property
    def connected(self) -> bool:
        return True

    def snapshot(self) -> dict[int, StageView]:
        with self._lock:
            return dict(self._views)

    def desired_version(self) -> str | None:
        with self._lock:
            return self._desired

    def desired_revision(self) -> int:
        with self._lock:
            return self._desired_revision

    def subscribe(self, callback: Callable[[dict[int, StageView]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def update(
        self,
        add: list[ReplicaInfo] = (),  # type: ignore[assignment]
        remove: list[str] = (),  # type: ignore[assignment]
        desired: str | None = None,
        desired_revision: int | None = None,
    ) -> None:
        """desired_revision: the revision the new desired version is seen at (default: one
        more than the last), to play a coordinator whose view lags."""
        with self._lock:
            views = {k: dict(v.replicas) for k, v in self._views.items()}
            for replica in add:
                views.setdefault(replica.stage, {})[replica.replica_id] = replica
            for stage_replicas in views.values():
                for replica_id in remove:
                    stage_replicas.pop(replica_id, None)
            self._views = {
                k: StageView(k, min(rs.values(), key=lambda r: r.replica_id) if rs else None, rs)
                for k, rs in views.items()
            }
            if desired is not None:
                self._desired = desired
                self._desired_revision = (
                    desired_revision if desired_revision is not None else self._desired_revision + 1
                )
            subscribers, table = list(self._subscribers), dict(self._views)
        for callback in subscribers:
            callback(table)


@dataclass(frozen=True)
class Answer:
    reply: session_pb2.StepReply
    action: torch.Tensor


class InProcessCoordinator:
    def __init__(
        self,
        models: dict[str, ActionModel],
        *,
        serving: list[str],
        replicas: int = 1,
        policy: PolicyConfig | None = None,
        student: bool = True,
        log_depth: int = 64,
        catch_up_budget_s: float = 0.1,
        stage_timeout_s: float = 0.2,
    ) -> None:
        self.models = models
        self.cfg = next(iter(models.values())).cfg
        self.stages: dict[str, InProcessStage] = {}  # by address
        self.table = MutableRoutingTable()
        self.store = MemorySessionStore()
        for version in serving:
            self.add_version(version, replicas)
        self.router = StageRouter(
            self.table, stage_timeout_s, BanPolicy(0.5, 5.0), connect=self._connect
        )
        pipeline = Pipeline(self.router, self.cfg.n_stages)
        self.batcher = DynamicBatcher(pipeline.run, 8, 0.001, 2)
        self.catalog = VersionCatalog(self.table, self.cfg, self._connect)
        self.catalog.start()
        students = {v: Student(self.cfg).eval() if student else None for v in models}
        self.students = students
        assets = ModelAssets.preloaded({v: VersionAssets(s, policy) for v, s in students.items()})
        self.engine = SessionEngine(
            store=self.store,
            cache=SessionCache(64),
            modes=ServeModes(self.store, self.batcher, self.cfg, log_depth),
            versions=self.catalog,
            assets=assets,
            health=self.router.healthy,
            admission=AdmissionGate(AdmissionController(AdmissionConfig(8, 32))),
            limits=SessionLimits(
                default_ttl_s=30.0,
                max_ttl_s=300.0,
                log_depth=log_depth,
                catch_up_budget_s=catch_up_budget_s,
            ),
            durability=Durability(max_wait_replicas=2, wait_timeout_s=0.1),
        )

    def add_version(self, version: str, replicas: int = 1) -> None:
        added = []
        for k in range(self.cfg.n_stages):
            for i in range(replicas):
                address = f"inproc-{version}-stage{k}-{i}"
                self.stages[address] = InProcessStage(
                    self.models[version].stage(k), version, address
                )
                added.append(ReplicaInfo(k, f"{version}-{k}-{i}", address, version, lease_id=1))
        self.table.update(add=added)
        self.catalog_refresh()

    def remove_version(self, version: str) -> None:
        gone = [a for a, s in self.stages.items() if s.servicer.version == version]
        ids = [f"{version}-{k}-{i}" for k in range(self.cfg.n_stages) for i in range(8)]
        self.table.update(remove=ids)
        for address in gone:
            self.stages.pop(address)
        self.catalog_refresh()

    def promote(self, version: str) -> None:
        self.table.update(desired=version)
        self.catalog_refresh()

    def catalog_refresh(self) -> None:
        catalog = getattr(self, "catalog", None)
        if catalog is not None:
            catalog.refresh()

    def stage(self, version: str, k: int, replica: int = 0) -> InProcessStage:
        return self.stages[f"inproc-{version}-stage{k}-{replica}"]

    def fault(self, version: str, k: int, fault: Fault, delay_s: float = 0.0) -> None:
        for address, stage in self.stages.items():
            if address.startswith(f"inproc-{version}-stage{k}-"):
                stage.faults.fault, stage.faults.delay_s = fault, delay_s

    def open(self) -> str:
        return self.engine.open(0.0, "robot", 0).session_id

    def step(
        self,
        session_id: str,
        seq: int,
        observation: torch.Tensor,
        timeout_s: float = 0.5,
        priority: Priority = Priority.NORMAL,
    ) -> Answer:
        answer = self.engine.step(
            session_id, seq, observation, 0.0, time.monotonic() + timeout_s, priority
        )
        reply = session_pb2.StepReply.FromString(answer.reply)
        return Answer(reply, tensor_codec.decode(reply.action))

    def close(self) -> None:
        self.catalog.stop()
        self.batcher.close()
        self.router.close()

    def _connect(self, replica: ReplicaInfo) -> InProcessStage:
        return self.stages[replica.address]
