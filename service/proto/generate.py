"""The one script that writes the generated protobuf and gRPC code beside the .proto files.

Run from anywhere: `python -m service.proto.generate`. tests/unit/test_protos.py fails when the
checked-in output differs from what this script writes. The public protos (session, tensor) live
in the client distribution, generated there by its own script for older runtimes too
(service/client_dist/actionmesh_client/proto/generate.py); stage.proto imports tensor.proto
from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
CLIENT_DIST = REPO_ROOT / "service" / "client_dist"  # holds actionmesh_client/proto/tensor.proto
PROTO_FILES = ("stage.proto",)


def generate(out_dir: Path) -> None:
    """Compile every proto into out_dir, laid out as the package path (service/proto/...)."""
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    sources = [f"service/proto/{name}" for name in PROTO_FILES]
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{CLIENT_DIST}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")


def main() -> int:
    generate(REPO_ROOT)
    print(f"generated code written to {PROTO_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
