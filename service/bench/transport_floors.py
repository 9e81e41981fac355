"""`actionmesh bench --floors`: what a step's hops cost with nothing of ours around them, on this
machine, so that `overhead_p50_ms` can be read against what no code of ours can go below.

Processes of `floor_server.py` (bytes in, bytes out) stand in for the coordinator's peers; the
messages are the default model's sizes (a stage's activation out and back, the stage states a
commit carries). The step's floor with today's topology is a robot's unary round trip, three
stage round trips called in turn and one Redis round trip; chaining the stages shard to shard
(the coordinator sends to stage 0, the last stage answers it) is measured beside it, and so
is a stage round trip whose server first computes for a stage's time (a caller that waited
that long, and a server whose caches the work filled, answer slower than a plain echo). Each
figure is taken in rounds alternating with the others, so the machine's noise falls on all.
"""

from __future__ import annotations

import os
import queue
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc

from service.bench.fleet_cost import process_cpu_s
from service.bench.floor_server import SERVICE
from service.bench.latency import percentile_ms
from service.local.child_process import ChildProcess
from service.local.embedded_redis import EmbeddedRedis, probe_client
from service.model.config import ModelConfig
from service.runtime.command_settings import BenchSettings

ROUNDS = 4
STAGES = 3
FLOAT_BYTES = 4
# A stream round trip minus the time the server worked before answering, as a shard computes.
AFTER_COMPUTE = "floor_stream_round_trip_after_compute_ms"


def _same(data: bytes) -> bytes:
    return data


class _Stream:
    """One bidi stream kept open: send a message, wait for the next one back."""

    def __init__(self, channel: grpc.Channel, method: str) -> None:
        self._outbox: queue.Queue[bytes] = queue.Queue()
        call = channel.stream_stream(
            f"/{SERVICE}/{method}", request_serializer=_same, response_deserializer=_same
        )
        self._replies: Iterator[bytes] = iter(call(iter(self._outbox.get, b"")))

    def send(self, message: bytes) -> None:
        self._outbox.put(message)

    def receive(self) -> bytes:
        return next(self._replies)

    def close(self) -> None:
        self._outbox.put(b"")  # ends the request iterator: the call finishes


def _servers(work_dir: Path, stack: ExitStack) -> list[ChildProcess]:
    """Start STAGES floor servers chained last to first; first stage first."""
    servers: list[ChildProcess] = []
    for k in reversed(range(STAGES)):
        argv = [sys.executable, "-m", "service.bench.floor_server"]
        argv += ["--die-with-parent", str(os.getpid())]
        if servers:
            argv += ["--next", str(servers[0].ports["port"])]
        child = ChildProcess(f"floor-{k}", argv, work_dir).start()
        stack.callback(child.stop)
        child.wait_ready(30.0)
        servers.insert(0, child)
    return servers


def measure(steps: int, work_dir: Path) -> dict[str, object]:
    cfg = ModelConfig()
    activation = b"\x01" * (cfg.tokens * cfg.d_model * FLOAT_BYTES)
    state = b"\x02" * (cfg.memory_tokens * cfg.d_model * FLOAT_BYTES)
    with ExitStack() as stack:
        servers = _servers(work_dir, stack)
        redis = stack.enter_context(EmbeddedRedis(work_dir / "redis"))
        client = probe_client(redis.port)
        channels = [
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{server.ports['port']}"))
            for server in servers
        ]
        streams = [_Stream(channel, "Echo") for channel in channels]
        working = _Stream(channels[0], "EchoAfterWork")
        chain_head = _Stream(channels[0], "Hop")
        for stream in (*streams, working, chain_head):
            stack.callback(stream.close)
        results = channels[-1].unary_stream(
            f"/{SERVICE}/Results", request_serializer=_same, response_deserializer=_same
        )(b"")
        stack.callback(results.cancel)
        chain_tail = iter(results)
        unary = channels[0].unary_unary(
            f"/{SERVICE}/EchoUnary", request_serializer=_same, response_deserializer=_same
        )

        def stream_round_trip() -> None:
            streams[0].send(activation)
            streams[0].receive()

        def round_trip_beyond_work() -> float:
            start = time.perf_counter()
            working.send(activation)
            (work_s,) = struct.unpack_from("d", working.receive())
            return time.perf_counter() - start - float(work_s)

        def stages_in_turn() -> None:
            for stream in streams:
                stream.send(activation)
                stream.receive()

        def chained() -> None:
            chain_head.send(activation)
            next(chain_tail)

        measured: dict[str, Callable[[], float]] = {
            "floor_stream_round_trip_ms": _timed(stream_round_trip),
            "floor_unary_round_trip_ms": _timed(lambda: unary(activation)),
            AFTER_COMPUTE: round_trip_beyond_work,
            "floor_stages_in_turn_ms": _timed(stages_in_turn),
            "floor_stages_chained_ms": _timed(chained),
            "floor_redis_round_trip_ms": _timed(
                lambda: client.eval("return 1", 0, *[state] * STAGES)
            ),
        }
        pids = [os.getpid(), redis.pid, *(server.pid for server in servers)]
        samples, cpu_s = _alternating(measured, max(10, steps // ROUNDS), pids)
    p50 = {name: round(percentile_ms(s, 50), 3) for name, s in samples.items()}
    cpu_us = {  # the server's work is not a hop's cost
        name.removeprefix("floor_").removesuffix("_ms"): round(cpu_s[name] / len(s) * 1e6, 1)
        for name, s in samples.items()
        if name != AFTER_COMPUTE
    }
    robot, redis_trip = p50["floor_unary_round_trip_ms"], p50["floor_redis_round_trip_ms"]
    return {
        "floor_stages": STAGES,
        "floor_activation_bytes": len(activation),
        **p50,
        "floor_cpu_us_per_call": cpu_us,
        "floor_step_overhead_ms": round(robot + p50["floor_stages_in_turn_ms"] + redis_trip, 3),
        "floor_step_overhead_chained_ms": round(
            robot + p50["floor_stages_chained_ms"] + redis_trip, 3
        ),
        "floor_step_overhead_computing_ms": round(
            robot + STAGES * p50[AFTER_COMPUTE] + redis_trip, 3
        ),
    }


def _timed(call: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return timed


def _alternating(
    measured: dict[str, Callable[[], float]], per_round: int, pids: list[int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each call's latency (s, as the call measures it), and the CPU seconds all of `pids` spent on each kind of call
    (every thread of the bench, the servers and Redis: both ends of every hop)."""
    samples: dict[str, list[float]] = {name: [] for name in measured}
    cpu_s = dict.fromkeys(measured, 0.0)
    for fn in measured.values():  # warm every path once: connections, thread pools
        for _ in range(20):
            fn()
    for _ in range(ROUNDS):
        for name, fn in measured.items():
            cpu_before = sum(process_cpu_s(pid) for pid in pids)
            samples[name] += [fn() for _ in range(per_round)]
            cpu_s[name] += sum(process_cpu_s(pid) for pid in pids) - cpu_before
    return samples, cpu_s


def run(settings: BenchSettings) -> dict[str, object]:
    if settings.work_dir is not None:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        return measure(settings.steps, settings.work_dir)
    with tempfile.TemporaryDirectory(prefix="actionmesh-floors-") as work_dir:
        return measure(settings.steps, Path(work_dir))


def print_table(result: dict[str, object]) -> None:
    print(
        f"transport floors, p50 ms ({result['floor_activation_bytes']} B activations, "
        f"{result['floor_stages']} stages):"
    )
    for key, label in (
        ("floor_unary_round_trip_ms", "unary round trip (robot -> coordinator)"),
        ("floor_stream_round_trip_ms", "stream round trip (one stage call)"),
        (AFTER_COMPUTE, "  the same beyond a stage-sized computation"),
        ("floor_stages_in_turn_ms", "stages called in turn"),
        ("floor_stages_chained_ms", "stages chained shard to shard"),
        ("floor_redis_round_trip_ms", "Redis round trip with a commit's bytes"),
        ("floor_step_overhead_ms", "a step's overhead cannot go below"),
        ("floor_step_overhead_chained_ms", "  with the stages chained"),
        ("floor_step_overhead_computing_ms", "  with each stage computing first"),
    ):
        print(f"  {label:<44} {result[key]:>8}")
    cpu = result["floor_cpu_us_per_call"]
    assert isinstance(cpu, dict)
    print("CPU per call, both ends (us): " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
