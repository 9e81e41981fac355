"""What every actionmesh gRPC process does the same way: health, reflection, ports, signals."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from service.runtime import exposition, logs, ready_file, sd_notify, tls, tracing
from service.runtime.exposition import Role
from service.runtime.ops_http import OpsServer
from service.runtime.readiness import Readiness

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# How often the main thread looks for a stop signal (see run_until_signal).
SIGNAL_POLL_S = 0.2
# A stop may take this long beyond drain_delay_s + grace_s (giving up leadership, the ops
# endpoint) before the process exits regardless, with STOP_OVERRAN_EXIT_CODE.
STOP_MARGIN_S = 3.0
STOP_OVERRAN_EXIT_CODE = 70


def exit_now(code: int) -> NoReturn:
    """Flush what is logged and printed, then end the process without the interpreter's
    teardown: its final garbage collection of a model's heap takes seconds, and exit joins
    every gRPC worker thread without a timeout. A stalled log sink is not flushed: that would
    wait for it."""
    if logs.drain():
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _exit_after(limit_s: float, name: str) -> None:
    """In the background: end the process if it is still here limit_s from now."""

    def overrun() -> None:
        time.sleep(limit_s)
        log.error("%s still stopping %.1fs after the stop signal: exiting now", name, limit_s)
        exit_now(STOP_OVERRAN_EXIT_CODE)

    threading.Thread(target=overrun, name=f"{name}-stop-limit", daemon=True).start()


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
        credentials: grpc.ServerCredentials | None = None,
        *,
        max_concurrent_rpcs: int | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        health_interval_s: float = 1.0,
        metrics_role: Role | None = None,
    ) -> None:
        """With credentials the one port is TLS (service/runtime/tls.py), else plaintext.
        max_concurrent_rpcs (default `workers`): calls past it are refused with
        RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") rather than queued for a thread,
        where a robot would only see its deadline pass."""
        self.name = name
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name),
            interceptors=tracing.server_interceptors(),  # none unless tracing is on
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Coordinators ping their shards every second (stage_client.KEEPALIVE_MS), with
                # or without a step under way: no GOAWAY for "too many pings".
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
                ("grpc.http2.max_ping_strikes", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs or workers,
        )
        service_names = list(register(self.server))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = tls.add_port(self.server, f"{host}:{port}", credentials)
        self.tls = credentials is not None
        if self.port == 0:
            raise SystemExit(f"{name}: cannot bind {host}:{port} (in use?); pass another --port")
        self.readiness = Readiness(name, self.health, service_names, is_ready, health_interval_s)
        registry = REGISTRY if metrics_role is None else exposition.registry_for(metrics_role)
        self.ops = OpsServer(host, metrics_port, self.readiness.ready, registry)
        self._stopped = threading.Event()

    def start(self, ready_path: Path | None) -> None:
        # Handlers go in before anyone can learn we serve: a SIGTERM sent the moment the ready
        # file or READY=1 appears must stop gracefully, not kill with the default action.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self.readiness.start()  # gRPC health and /ready: SERVING once (and while) is_ready()
        self.server.start()
        self.ops.start()
        if ready_path is not None:
            ready_file.write(ready_path, grpc_port=self.port, metrics_port=self.ops.port)
        log.info(
            "%s serving grpc=%d (%s) metrics=%d",
            self.name,
            self.port,
            "mutual TLS" if self.tls else "plaintext",
            self.ops.port,
        )
        sd_notify.notify(f"READY=1\nSTATUS=serving grpc={self.port} metrics={self.ops.port}")

    def run_until_signal(
        self,
        grace_s: float = 2.0,
        before_stop: Callable[[], None] | None = None,
        drain_delay_s: float = 0.0,
        on_signal: Callable[[], object] | None = None,
    ) -> None:
        """Serve until SIGTERM/SIGINT; then run `on_signal` (e.g. stop campaigning for
        leadership), report NOT_SERVING (gRPC health, /ready 503) and keep serving
        drain_delay_s so that balancers and clients move away, run `before_stop` (e.g. give up
        leadership), then stop accepting calls and let those in flight finish within grace_s.
        The process exits STOP_MARGIN_S after that at the latest, whatever still runs."""
        # The kernel may hand the signal to any thread; Python then only flags it for the main
        # thread, which runs the handler when it next runs Python code. Waiting without a
        # timeout, a main thread would sleep through it (docs/chaos.md: shards still up 10 s
        # after SIGTERM).
        while not self._stopped.wait(SIGNAL_POLL_S):
            pass
        _exit_after(drain_delay_s + grace_s + STOP_MARGIN_S, self.name)
        if on_signal is not None:
            on_signal()
        self.readiness.drain()
        sd_notify.notify("STOPPING=1")
        time.sleep(drain_delay_s)
        if before_stop is not None:
            before_stop()
        log.info("%s stopping (grace %.1fs)", self.name, grace_s)
        self.readiness.stop()
        self.health.enter_graceful_shutdown()
        if not self.server.stop(grace_s).wait(grace_s + STOP_MARGIN_S / 2):
            log.warning("%s calls still running %.1fs after the grace", self.name, grace_s)
        self.ops.stop()
