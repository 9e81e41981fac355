"""Readiness publishes what its check says to gRPC health (every service and the whole server)
and to /ready, changes when the check does, and after drain() says NOT_SERVING for good."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from service.runtime.readiness import Readiness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ["actionmesh.v1.SessionService"]


class Flag:
    def __init__(self) -> None:
        self.value: bool | Exception = True

    def __call__(self) -> bool:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def statuses(servicer: health.HealthServicer) -> set[int]:
    return {
        servicer.Check(health_pb2.HealthCheckRequest(service=name), None).status  # type: ignore[arg-type]
        for name in ["", *SERVICES]
    }


def readiness(check: Flag) -> tuple[Readiness, health.HealthServicer]:
    servicer = health.HealthServicer()
    return Readiness("test", servicer, SERVICES, check, interval_s=3600), servicer


def test_health_follows_the_check_both_ways() -> None:
    check = Flag()
    ready, servicer = readiness(check)
    ready.start()
    try:
        assert ready.ready() and statuses(servicer) == {SERVING}
        check.value = False
        assert ready.refresh() is False
        assert not ready.ready() and statuses(servicer) == {NOT_SERVING}
        check.value = True
        ready.refresh()
        assert ready.ready() and statuses(servicer) == {SERVING}
    finally:
        ready.stop()


def test_a_failing_check_means_not_ready() -> None:
    check = Flag()
    check.value = ConnectionError("redis down")
    ready, servicer = readiness(check)
    ready.start()
    try:
        assert not ready.ready() and statuses(servicer) == {NOT_SERVING}
    finally:
        ready.stop()


def test_drained_stays_not_serving_whatever_the_check_says() -> None:
    check = Flag()
    ready, servicer = readiness(check)
    ready.start()
    try:
        ready.drain()
        assert not ready.ready() and statuses(servicer) == {NOT_SERVING}
        check.value = False
        ready.refresh()
        check.value = True
        ready.refresh()
        assert not ready.ready() and statuses(servicer) == {NOT_SERVING}
    finally:
        ready.stop()
