"""`buf` (lint and breaking-change checks for the public protos), from the npm registry's
`@bufbuild/buf` with the machine's npm, installed into a cache folder on first use (a
`buf` already on PATH is used instead; delete the folder to fetch again).

buf would fetch `google/rpc/status.proto` from the Buf Schema Registry, which these machines
cannot reach; `workspace` lays the public protos out beside the copy that the
googleapis-common-protos package ships instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from google.rpc import status_pb2

VERSION = "1.75.0"
CACHE = Path(
    os.environ.get("ACTIONMESH_BUF_CACHE", Path.home() / ".cache" / "actionmesh" / f"buf-{VERSION}")
)
CLIENT_DIST = Path(__file__).resolve().parents[2] / "service" / "client_dist"
API = Path("actionmesh_client") / "proto"  # where the public protos sit in a module


def binary() -> Path | None:
    """Path of `buf`; None when neither buf nor npm is on this machine."""
    if (on_path := shutil.which("buf")) is not None:
        return Path(on_path)
    installed = CACHE / "node_modules" / ".bin" / "buf"
    if installed.is_file():
        return installed
    npm = shutil.which("npm")
    if npm is None:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(CACHE),
         f"@bufbuild/buf@{VERSION}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return installed


def workspace(protos: Path, into: Path) -> Path:
    """A buf module in `into`: the client's buf.yaml, the .proto files of `protos` at their
    import path, and google/rpc/status.proto (imported, not linted)."""
    (into / API).mkdir(parents=True)
    shutil.copy(CLIENT_DIST / "buf.yaml", into / "buf.yaml")
    for proto in protos.glob("*.proto"):
        shutil.copy(proto, into / API / proto.name)
    google_rpc = into / "google" / "rpc"
    google_rpc.mkdir(parents=True)
    shutil.copy(Path(status_pb2.__file__).with_name("status.proto"), google_rpc)
    return into


def run(buf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], capture_output=True, text=True, timeout=300, check=False
    )
