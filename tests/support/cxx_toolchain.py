"""The C++ gRPC toolchain that builds examples/cpp in the tests: Debian's gRPC and protobuf
development packages (headers, libraries, CMake config, `protoc`, `grpc_cpp_plugin`).

A machine that has them installed uses its own. Otherwise they come through the ordinary apt
client without changing the system (service/local/apt_cache.py): the packages and whatever
dependencies the machine lacks are `apt-get download`ed and unpacked into
`~/.cache/actionmesh/cxx` (`ACTIONMESH_CXX_CACHE` to move it; ~85 MB, delete it to fetch again).
CMake finds them through CMAKE_PREFIX_PATH; the linker and the built programs (`protoc`
included) find their libraries through LIBRARY_PATH and LD_LIBRARY_PATH.

`google/rpc/status.proto` (imported by session.proto once its errors are `google.rpc.Status`)
is in none of those packages; the googleapis-common-protos Python package (installed with the
server, through opentelemetry-exporter-otlp-proto-grpc) ships it beside its generated code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import google.rpc.status_pb2

from service.local import apt_cache

CACHE = Path(os.environ.get("ACTIONMESH_CXX_CACHE", Path.home() / ".cache" / "actionmesh" / "cxx"))
PACKAGES = ("libgrpc++-dev", "protobuf-compiler-grpc", "libprotobuf-dev", "protobuf-compiler")
SYSTEM_HEADER = Path("/usr/include/grpcpp/grpcpp.h")


@dataclass(frozen=True)
class Toolchain:
    """Where the toolchain is: `prefix` None for the system's own install, else the unpacked
    cache's `usr`; `packages` the .debs unpacked there (empty when the cache was reused)."""

    prefix: Path | None
    packages: tuple[str, ...] = ()

    def _library_dir(self) -> Path | None:
        if self.prefix is None:
            return None
        return next(self.prefix.glob("lib/*/libgrpc++.so")).parent

    def environment(self) -> dict[str, str]:
        """The process environment for cmake, make and the built client."""
        env = dict(os.environ)
        library_dir = self._library_dir()
        if library_dir is not None:
            for key in ("LD_LIBRARY_PATH", "LIBRARY_PATH"):
                env[key] = os.pathsep.join(filter(None, [str(library_dir), env.get(key)]))
        return env

    def build(self, source: Path, build_dir: Path) -> Path:
        """Configure and build the CMake project `source` in `build_dir` (-O1, make -j2: quick
        on two cores); returns the client binary. Raises RuntimeError with the tool's output."""
        configure = [
            "cmake", "-S", str(source), "-B", str(build_dir),
            "-DCMAKE_CXX_FLAGS=-O1",
            f"-DGOOGLEAPIS_PROTO_ROOT={googleapis_proto_root()}",
        ]  # fmt: skip
        if self.prefix is not None:
            configure.append(f"-DCMAKE_PREFIX_PATH={self.prefix}")
        for command in (configure, ["make", "-C", str(build_dir), "-j2"]):
            done = subprocess.run(
                command,
                env=self.environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=900,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{command[0]} failed:\n{done.stdout[-4000:]}")
        return build_dir / "actionmesh_cpp_client"


def googleapis_proto_root() -> Path:
    """The folder holding google/rpc/status.proto: googleapis-common-protos' site-packages."""
    root = Path(google.rpc.status_pb2.__file__).parents[2]
    if not (root / "google" / "rpc" / "status.proto").is_file():
        raise FileNotFoundError(f"googleapis-common-protos ships no status.proto under {root}")
    return root


def toolchain() -> Toolchain:
    """The system's toolchain when installed, else the cache's (fetched on first use); raises
    apt_cache.AptUnavailable when apt cannot provide it."""
    if SYSTEM_HEADER.is_file() and shutil.which("protoc") and shutil.which("grpc_cpp_plugin"):
        return Toolchain(None)
    prefix = CACHE / "usr"
    if (prefix / "bin" / "grpc_cpp_plugin").is_file():
        return Toolchain(prefix)
    debs = apt_cache.unpack(apt_cache.missing(PACKAGES), CACHE)
    return Toolchain(prefix, tuple(debs))
