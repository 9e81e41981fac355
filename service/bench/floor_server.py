"""A gRPC process with nothing of ours around it, for `bench --floors`: what Python gRPC itself
costs a hop on this machine, the floor a stage call is measured against.

Methods take and give raw bytes (no protobuf): `Echo` (a bidi stream answering each message
with itself), `EchoUnary`, `EchoAfterWork` (like `Echo`, but each answer comes after some
work over a stage's worth of weights, as a shard computes, and starts with the work's
duration: a float64 of seconds), and for a chain of these processes `Hop` (pass each message
to the next process's `Hop`, or, in the last one, to whoever listens on `Results`).

    python -m service.bench.floor_server --ready-file F [--next PORT] [--die-with-parent PID]
"""

from __future__ import annotations

import argparse
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from service.local.child_process import die_with_parent
from service.runtime import ready_file

SERVICE = "actionmesh.bench.Floor"
WORK_SHAPE = (32, 1536, 1024)  # activations x weights: 6 MiB of float32 weights, ~1-2 ms


def _same(data: bytes) -> bytes:
    return data


def _stream_to(port: int, method: str, outbox: queue.Queue[bytes]) -> None:
    """Send every message put in `outbox` on one long-lived stream to `method` at `port`."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(
        f"/{SERVICE}/{method}", request_serializer=_same, response_deserializer=_same
    )
    replies = call(iter(outbox.get, b""))
    threading.Thread(target=lambda: [None for _ in replies], daemon=True).start()


def _stage_like_work() -> Callable[[], object]:
    """A matrix product on one thread (a shard runs torch on one), its weights as large as a
    stage's: what a stage's compute does to the caches and to the waiting caller."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read when numpy loads: imported only now
    import numpy as np

    rows, inner, cols = WORK_SHAPE
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, inner), dtype=np.float32)
    w = rng.standard_normal((inner, cols), dtype=np.float32)
    return lambda: x @ w


def serve(next_port: int | None) -> grpc.Server:
    results: queue.Queue[bytes] = queue.Queue()
    onward: queue.Queue[bytes] = queue.Queue()
    if next_port is not None:
        _stream_to(next_port, "Hop", onward)

    def echo(messages: Iterator[bytes], _: grpc.ServicerContext) -> Iterator[bytes]:
        yield from messages

    def echo_unary(message: bytes, _: grpc.ServicerContext) -> bytes:
        return message

    work = _stage_like_work()

    def echo_after_work(messages: Iterator[bytes], _: grpc.ServicerContext) -> Iterator[bytes]:
        for message in messages:
            start = time.perf_counter()
            work()
            yield struct.pack("d", time.perf_counter() - start) + message

    def hop(messages: Iterator[bytes], _: grpc.ServicerContext) -> Iterator[bytes]:
        for message in messages:
            (onward if next_port is not None else results).put(message)
        return iter(())

    def listen(_: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        while context.is_active():
            try:
                yield results.get(timeout=0.5)
            except queue.Empty:
                continue

    handlers = {
        "Echo": grpc.stream_stream_rpc_method_handler(echo, _same, _same),
        "EchoUnary": grpc.unary_unary_rpc_method_handler(echo_unary, _same, _same),
        "EchoAfterWork": grpc.stream_stream_rpc_method_handler(echo_after_work, _same, _same),
        "Hop": grpc.stream_stream_rpc_method_handler(hop, _same, _same),
        "Results": grpc.unary_stream_rpc_method_handler(listen, _same, _same),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--next", type=int, default=None, help="the next process's port")
    parser.add_argument("--die-with-parent", type=int, default=None)
    args = parser.parse_args()
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)
    server = serve(args.next)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready_file.write(args.ready_file, port=port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
