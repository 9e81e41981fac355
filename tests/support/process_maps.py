"""Which shared libraries a live process has mapped (/proc/PID/maps): how a test sees, from
outside, that a shard runs on ONNX Runtime and never loaded torch."""

from __future__ import annotations

from pathlib import Path


def mapped_files(pid: int) -> set[str]:
    """Paths of every file mapped into process `pid`'s memory."""
    files = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            files.add(fields[5])
    return files


def loads_torch(pid: int) -> bool:
    return any("/torch/" in path for path in mapped_files(pid))


def loads_onnxruntime(pid: int) -> bool:
    return any("/onnxruntime/" in path for path in mapped_files(pid))
