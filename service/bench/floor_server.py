"""A gRPC process with nothing of ours around it, for `bench --floors`: what Python gRPC itself
costs a hop on this machine, the floor a stage call is measured against.

Methods take and give raw bytes (no protobuf): `Echo` (a bidi stream answering each message
with itself), `EchoUnary`, and for a chain of these processes `Hop` (pass each message to the
next process's `Hop`, or, in the last one, to whoever listens on `Results`).

    python -m service.bench.floor_server --ready-file F [--next PORT] [--die-with-parent PID]
"""

from __future__ import annotations

import argparse
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from service.local.child_process import die_with_parent
from service.runtime import ready_file

SERVICE = "actionmesh.bench.Floor"


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


def serve(next_port: int | None) -> grpc.Server:
    results: queue.Queue[bytes] = queue.Queue()
    onward: queue.Queue[bytes] = queue.Queue()
    if next_port is not None:
        _stream_to(next_port, "Hop", onward)

    def echo(messages: Iterator[bytes], _: grpc.ServicerContext) -> Iterator[bytes]:
        yield from messages

    def echo_unary(message: bytes, _: grpc.ServicerContext) -> bytes:
        return message

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
