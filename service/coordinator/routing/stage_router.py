"""Send one stage's Forward to the best replica, failing over to another within the deadline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from actionmesh_client.client_tls import ClientTls
from service.coordinator.routing.call_patience import Patience, UsualLatency
from service.coordinator.routing.replica_choice import Ban, BanPolicy, candidates, is_banned
from service.coordinator.routing.stage_client import (
    RequestRefused,
    StageClient,
    StageTimeout,
    StageTransport,
    VersionRefused,
)
from service.coordinator.step_errors import Unavailable
from service.proto import stage_pb2
from service.runtime import logs, metrics
from state.leadership import ReplicaInfo, RoutingTable, StageView

log = logging.getLogger(__name__)


class StageUnavailable(Unavailable):
    """No replica of `stage` could serve the call within the step (or its time ran out)."""

    def __init__(self, stage: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def grpc_transport(replica: ReplicaInfo) -> StageTransport:
    return StageClient(replica.stage, replica.address)


def grpc_transports(tls: ClientTls | None) -> Callable[[ReplicaInfo], StageTransport]:
    """What connects to a replica over gRPC: with mutual TLS when tls is given."""
    if tls is None:
        return grpc_transport
    return lambda replica: StageClient(replica.stage, replica.address, tls)


class StageRouter:
    """Suspects a replica at its first failure (no waiting for its lease to run out), bans it
    with a ban that doubles on repeated failures, and clears the ban on its next success.
    A call that takes several times the stage's usual latency is such a failure (see
    call_patience): a hung replica is left early enough for the step to fail over or degrade."""

    def __init__(
        self,
        table: RoutingTable,
        stage_timeout_s: float,
        bans: BanPolicy,
        connect: Callable[[ReplicaInfo], StageTransport] = grpc_transport,
        patience: Patience | None = None,
    ) -> None:
        self.table, self.connect = table, connect
        self.stage_timeout_s, self.ban_policy = stage_timeout_s, bans
        self.patience = patience if patience is not None else Patience()
        self.usual = UsualLatency()
        self._clients: dict[str, StageTransport] = {}
        self._bans: dict[str, Ban] = {}
        self._lock = threading.Lock()

    def forward(
        self, stage: int, request: stage_pb2.ForwardRequest, deadline: float
    ) -> stage_pb2.ForwardReply:
        version = request.model_version
        tried: set[str] = set()
        failures: list[str] = []
        while True:
            now, view = time.monotonic(), self.table.snapshot().get(stage, StageView(stage))
            with self._lock:
                options = candidates(view, version, self._bans, now, frozenset(tried))
                # banned replicas come last: is there a spare one that is not?
                spare = len(options) > 1 and not is_banned(options[1], self._bans, now)
            if not options or deadline <= now:
                raise _no_replica(stage, version, bool(options), failures)
            usual = self.usual.of(stage)
            timeout_s = self.patience.timeout_s(usual, self.stage_timeout_s, deadline - now, spare)
            replica, sent = options[0], time.monotonic()
            try:
                reply = self._client(replica).forward(request, timeout_s)
            except RequestRefused as exc:  # another replica would refuse it as well
                raise StageUnavailable(
                    stage,
                    f"stage {stage}: {replica.replica_id} refused the request as malformed "
                    f"({exc}); the session was not advanced",
                ) from exc
            except Unavailable as exc:
                fair_s = self.patience.fair_s(usual, self.stage_timeout_s)
                if isinstance(exc, StageTimeout) and timeout_s < fair_s:
                    raise StageUnavailable(  # cut short by the step's deadline: not the replica's fault
                        stage,
                        f"stage {stage}: the step deadline ran out during the call to "
                        f"{replica.replica_id}; the session was not advanced, retry the same seq",
                    ) from exc
                tried.add(replica.replica_id)
                failures.append(f"{replica.replica_id}: {exc}")
                if not isinstance(exc, VersionRefused):
                    self._suspect(replica, now)
                continue
            self.usual.observe(stage, time.monotonic() - sent)
            self._forgive(replica)
            return reply

    def healthy(self, version: str, n_stages: int) -> list[bool]:
        """Per stage: some replica of `version` is registered and not under suspicion."""
        now, views = time.monotonic(), self.table.snapshot()
        with self._lock:
            return [
                any(
                    r.model_version == version and not is_banned(r, self._bans, now)
                    for r in views.get(k, StageView(k)).replicas.values()
                )
                for k in range(n_stages)
            ]

    def _client(self, replica: ReplicaInfo) -> StageTransport:
        with self._lock:
            client = self._clients.get(replica.address)
            if client is None:
                client = self._clients[replica.address] = self.connect(replica)
            return client

    def _suspect(self, replica: ReplicaInfo, now: float) -> None:
        with self._lock:
            ban = self._bans[replica.replica_id] = self.ban_policy.after_failure(
                self._bans.get(replica.replica_id), now, replica.lease_id
            )
        metrics.REPLICA_SUSPECTED.labels(str(replica.stage), replica.replica_id).inc()
        metrics.REPLICA_BANNED.labels(str(replica.stage), replica.replica_id).set(1)
        log.warning(
            "stage=%d replica=%s address=%s suspected: failure %d in a row, banned %.2fs",
            replica.stage,
            replica.replica_id,
            replica.address,
            ban.failures,
            ban.until - now,
            extra=logs.fields(stage=replica.stage, replica=replica.replica_id),
        )

    def _forgive(self, replica: ReplicaInfo) -> None:
        with self._lock:
            if self._bans.pop(replica.replica_id, None) is not None:
                metrics.REPLICA_BANNED.labels(str(replica.stage), replica.replica_id).set(0)
                log.info(
                    "stage=%d replica=%s served again; ban cleared",
                    replica.stage,
                    replica.replica_id,
                )

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _no_replica(
    stage: int, version: str, out_of_time: bool, failures: list[str]
) -> StageUnavailable:
    reason = (
        "no time left before the step deadline"
        if out_of_time
        else f"no replica of model {version} left to try"
    )
    tried = f" (tried: {'; '.join(failures)})" if failures else ""
    return StageUnavailable(
        stage, f"stage {stage}: {reason}{tried}; the session was not advanced, retry the same seq"
    )
