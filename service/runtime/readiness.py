"""Whether this process should get traffic now, told the same way to gRPC health and /ready.

A check (Redis reachable for a coordinator, leadership known for a shard) is asked every
`interval_s` in a thread of its own, so a health probe never waits on Redis or etcd, and both
answers change when the truth does, not only at start. `drain()` (on SIGTERM) turns both
NOT_SERVING for good before the server stops accepting calls, so that load balancers and
clients move away while calls in flight finish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from grpc_health.v1 import health, health_pb2

from service.runtime import metrics

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Keeps `health`'s status of every service in `services` ("" = the whole server) equal
    to `check()` (an exception counts as not ready) until drained."""

    def __init__(
        self,
        name: str,
        health_servicer: health.HealthServicer,
        services: Sequence[str],
        check: Callable[[], bool],
        interval_s: float,
    ) -> None:
        self._name = name
        self._health = health_servicer
        self._services = ["", *services]
        self._check = check
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: not asked yet
        self._draining = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-readiness", daemon=True)

    def start(self) -> None:
        """Ask once now (the first answer is known before anyone can probe), then every
        interval_s in the background."""
        self.refresh()
        self._thread.start()

    def ready(self) -> bool:
        with self._lock:
            return bool(self._ready) and not self._draining

    def refresh(self) -> bool:
        """Ask the check now and publish its answer; returns it."""
        try:
            ok = bool(self._check())
        except Exception as exc:  # a check that cannot tell says "not ready"
            log.warning("%s readiness check failed: %s", self._name, exc)
            ok = False
        with self._lock:
            changed, self._ready = ok != self._ready, ok
            if changed and not self._draining:
                self._publish(_SERVING if ok else _NOT_SERVING)
        if changed:
            (log.info if ok else log.warning)(
                "%s is %s", self._name, "ready (SERVING)" if ok else "not ready (NOT_SERVING)"
            )
        return ok

    def drain(self) -> None:
        """NOT_SERVING from now on, whatever the check says (a second call changes nothing)."""
        with self._lock:
            if self._draining:
                return
            self._draining = True
            self._publish(_NOT_SERVING)
        log.info("%s draining: health NOT_SERVING, /ready 503", self._name)

    def stop(self) -> None:
        self._stopped.set()

    def _publish(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        metrics.READY.set(1 if status == _SERVING else 0)
        for service in self._services:
            self._health.set(service, status)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.refresh()
