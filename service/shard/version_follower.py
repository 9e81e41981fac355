"""Keeps a shard on the cluster's desired model version: watches etcd, and reloads or hands
over leadership as service.shard.rollout decides."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable

from service.runtime import metrics
from service.shard.rollout import Move, next_move
from service.shard.stage_runtime import StageRuntime
from service.shard.stage_servicer import StageServicer
from state.leadership import ReplicaMembership, Role, RoutingTable

log = logging.getLogger(__name__)

# Loads the weights of one version of this shard's stage, verified; raises on failure.
LoadVersion = Callable[[str], StageRuntime]

CHECK_EVERY_S = 1.0  # also re-decide without a watch event (e.g. after a failed load)
RETRY_FAILED_S = 10.0  # before trying again to load a version that failed to load once
RETRY_MAX_S = 120.0  # the wait doubles with each failure in a row, up to this
RETRY_JITTER = 0.2  # each wait is drawn within +-20 %: replicas that failed together spread out
HANDOVER_WAIT_S = 5.0  # how long to wait for our leadership to go after stepping aside
RETIRE_AFTER_S = 3.0  # the old version keeps answering steps already routed to it


def retry_after_s(failures: int) -> float:
    """How long to wait before loading a version again after `failures` failed loads in a row:
    a full flash or a missing blob is not fixed in seconds, and each attempt may download."""
    wait = min(RETRY_MAX_S, RETRY_FAILED_S * 2.0 ** (failures - 1))
    return wait * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


class VersionFollower:
    def __init__(
        self,
        table: RoutingTable,
        membership: ReplicaMembership,
        servicer: StageServicer,
        load: LoadVersion,
        n_stages: int,
    ) -> None:
        self.table, self.membership, self.servicer = table, membership, servicer
        self.load, self.n_stages = load, n_stages
        # version -> (failed loads in a row, when it may be tried again)
        self._failed: dict[str, tuple[int, float]] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.table.start()
        self.table.subscribe(lambda _views: self._wake.set())
        self._thread = threading.Thread(target=self._run, name="version-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.table.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow_once()
            except Exception:  # a bug must not end the thread: the shard would stop following
                log.exception("version follower step failed")
            self._wake.wait(CHECK_EVERY_S)
            self._wake.clear()

    def _follow_once(self) -> None:
        desired = self.table.desired_version()
        me = self.membership.info
        leading = self.membership.role is Role.LEADER
        move = next_move(me, leading, desired, self.table.snapshot(), self.n_stages)
        if move is Move.STAY or desired is None:
            return
        if desired in self._failed and time.monotonic() < self._failed[desired][1]:
            return
        if move is Move.HAND_OVER:
            log.info("stage=%d handing leadership over before loading %s", me.stage, desired)
            self.membership.step_aside()
            deadline = time.monotonic() + HANDOVER_WAIT_S
            while self.membership.role is Role.LEADER and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reload(desired)

    def _reload(self, version: str) -> None:
        me = self.membership.info
        started = time.monotonic()
        failures = self._failed.get(version, (0, 0.0))[0]
        if failures:
            metrics.SHARD_RELOAD_RETRIES.labels(str(me.stage)).inc()
        try:
            stage = self.load(version)
        except Exception as exc:  # the shard keeps serving what it serves
            failures += 1
            wait_s = retry_after_s(failures)
            self._failed[version] = (failures, time.monotonic() + wait_s)
            metrics.SHARD_RELOADS.labels(str(me.stage), "failed").inc()
            log.error(
                "stage=%d could not load desired version %s (still serving %s; failure %d in a "
                "row, retry in %.0fs): %s",
                me.stage,
                version,
                me.model_version,
                failures,
                wait_s,
                exc,
            )
            self.membership.announce(me)  # campaign again if we stepped aside
            return
        self._failed.pop(version, None)
        self.servicer.swap(stage, version, RETIRE_AFTER_S)
        self.membership.announce(dataclasses.replace(me, model_version=version))
        metrics.SHARD_RELOADS.labels(str(me.stage), "loaded").inc()
        log.info(
            "stage=%d now serves %s (was %s; loaded in %.2fs)",
            me.stage,
            version,
            me.model_version,
            time.monotonic() - started,
        )
