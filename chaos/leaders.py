"""Who leads each stage over a chaos run, as etcd and the replicas themselves say: a thread
that polls the stage keys and every registered replica's Info, and asks etcd whether each
claimant's lease is still live. The verdict one-leader-per-stage is checked on its samples.

The probes of one poll are not one instant, so a claim counts only where it spans the poll:
a replica leads by its own word if it says so both before and after etcd's leader keys are
read (a replica that hands over between two probes then claims in one poll only), and etcd's
key holder is read between them. Two claimants in one poll therefore led at one instant."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from chaos.record import LeaderSample
from service.proto import stage_pb2, stage_pb2_grpc
from state.etcd_client import EtcdConnection, EtcdUnavailable, LeaseNotFound
from state.etcd_keys import stage_views, stages_prefix

log = logging.getLogger(__name__)

POLL_S = 0.25
# A replica that does not answer Info within this (paused, partitioned, busy) claims nothing.
INFO_TIMEOUT_S = 0.2
ETCD_TIMEOUT_S = 0.5

Claim = tuple[int, str, int, str]  # stage, replica_id, lease_id, source


class LeaderWatch(threading.Thread):
    """`start()` after the cluster is up, `stop()` and `join()` at the end; `samples` holds
    every poll whose claims differ from the previous one's (a run of identical polls is kept
    as its first)."""

    def __init__(
        self, etcd_url: str, cluster: str, clock: Callable[[], float], poll_s: float = POLL_S
    ) -> None:
        super().__init__(name="chaos-leader-watch", daemon=True)
        self._url, self._prefix, self._clock, self._poll_s = (
            etcd_url,
            stages_prefix(cluster),
            clock,
            poll_s,
        )
        self._stop_event = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self.samples: list[LeaderSample] = []
        self.polls = 0  # polls that reached etcd

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        etcd = EtcdConnection(self._url, ETCD_TIMEOUT_S)
        last: set[tuple[int, str, int, str, bool]] = set()
        try:
            while not self._stop_event.wait(self._poll_s):
                try:
                    polled = self._poll(etcd)
                except EtcdUnavailable:
                    continue  # etcd's quorum lost, say: nothing is known of this moment
                self.polls += 1
                keys = {(s.stage, s.replica_id, s.lease_id, s.source, s.lease_live) for s in polled}
                if keys != last:
                    self.samples += polled
                    last = keys
        finally:
            etcd.close()
            for channel in self._channels.values():
                channel.close()

    def _poll(self, etcd: EtcdConnection) -> list[LeaderSample]:
        at = round(self._clock(), 4)
        _, entries = etcd.list_prefix(self._prefix)
        replicas = [
            r for v in stage_views(self._prefix, entries).values() for r in v.replicas.values()
        ]
        before = [r for r in replicas if self._role(r.address) == "leader"]
        _, entries = etcd.list_prefix(self._prefix)  # the key holders, between the two probes
        claims: list[Claim] = [
            (stage, view.leader.replica_id, view.leader.lease_id, "etcd")
            for stage, view in stage_views(self._prefix, entries).items()
            if view.leader is not None
        ]
        claims += [
            (r.stage, r.replica_id, r.lease_id, "self")
            for r in before
            if self._role(r.address) == "leader"
        ]
        # Asked after the claims were seen: a lease live now was live when they were made.
        live = {lease: self._live(etcd, lease) for lease in {c[2] for c in claims}}
        return [
            LeaderSample(at, s, r, lease, source, live[lease]) for s, r, lease, source in claims
        ]

    def _role(self, address: str) -> str:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        try:
            reply = stage_pb2_grpc.StageServiceStub(channel).Info(
                stage_pb2.InfoRequest(), timeout=INFO_TIMEOUT_S
            )
        except grpc.RpcError:
            return ""
        return str(reply.role)

    @staticmethod
    def _live(etcd: EtcdConnection, lease_id: int) -> bool:
        try:
            return etcd.lease_ttl(lease_id) > 0
        except LeaseNotFound:
            return False
