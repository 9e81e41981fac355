"""A shard started as a real child process on a checkpoint flash, and the version it serves."""

from __future__ import annotations

from pathlib import Path

import grpc

from service.local.child_process import ChildProcess
from service.proto import stage_pb2, stage_pb2_grpc


def start_flash_shard(tmp: Path, name: str, *flags: str) -> ChildProcess:
    """Stage 1 on `tmp/flash`, trusting `tmp/keys`; `flags` add e.g. `--remote URL`."""
    return ChildProcess(
        name,
        ChildProcess.actionmesh(
            "shard",
            "--stage",
            "1",
            "--port",
            "0",
            "--flash-dir",
            str(tmp / "flash"),
            "--trusted-keys",
            str(tmp / "keys" / "checkpoint-signing.pub"),
            *flags,
        ),
        tmp / "logs",
    ).start()


def served_version(shard: ChildProcess) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{shard.ports['grpc_port']}") as channel:
        info = stage_pb2_grpc.StageServiceStub(channel).Info(stage_pb2.InfoRequest(), timeout=5)
    return str(info.model_version)
