"""A shard under systemd (Type=notify) tells it when it serves and when it stops: READY=1
arrives on $NOTIFY_SOCKET once the gRPC port answers, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import socket
from pathlib import Path

from service.local.child_process import ChildProcess


def test_shard_sends_ready_then_stopping_to_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        shard = ChildProcess(
            "shard-notify",
            ["env", f"NOTIFY_SOCKET={path}", *ChildProcess.actionmesh("shard", "--port", "0")],
            tmp_path,
        ).start()
        try:
            ready = sock.recv(4096).decode()
            ports = shard.wait_ready(30)
            assert ready.splitlines()[0] == "READY=1"
            assert f"grpc={ports['grpc_port']}" in ready
            shard.terminate()
            assert sock.recv(4096).decode() == "STOPPING=1"
        finally:
            shard.stop()
