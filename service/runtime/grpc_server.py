"""What every actionmesh gRPC process does the same way: health, reflection, ports, signals."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.runtime import ready_file, sd_notify
from service.runtime.ops_http import OpsServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class GrpcProcess:
    """A started gRPC server plus its ops HTTP endpoint; `run_until_signal` blocks."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        metrics_port: int,
        workers: int,
        register: Callable[[grpc.Server], Sequence[str]],
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.name = name
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        service_names = list(register(self.server))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise SystemExit(f"{name}: cannot bind {host}:{port} (in use?); pass another --port")
        self.ops = OpsServer(host, metrics_port, is_ready)
        self._service_names = service_names
        self._stopped = threading.Event()

    def start(self, ready_path: Path | None) -> None:
        # Handlers go in before anyone can learn we serve: a SIGTERM sent the moment the ready
        # file or READY=1 appears must stop gracefully, not kill with the default action.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self.server.start()
        self.ops.start()
        for service_name in ["", *self._service_names]:
            self.health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        if ready_path is not None:
            ready_file.write(ready_path, grpc_port=self.port, metrics_port=self.ops.port)
        log.info("%s serving grpc=%d metrics=%d", self.name, self.port, self.ops.port)
        sd_notify.notify(f"READY=1\nSTATUS=serving grpc={self.port} metrics={self.ops.port}")

    def run_until_signal(
        self, grace_s: float = 2.0, before_stop: Callable[[], None] | None = None
    ) -> None:
        """Serve until SIGTERM/SIGINT; then `before_stop` (e.g. give up leadership), then stop
        accepting calls and let those in flight finish within grace_s."""
        self._stopped.wait()
        if before_stop is not None:
            before_stop()
        log.info("%s stopping (grace %.1fs)", self.name, grace_s)
        sd_notify.notify("STOPPING=1")
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        self.ops.stop()
