"""`actionmesh export`: write the stages and the student of a weights directory as ONNX graphs
or TorchScript modules (service/model/export.py), beside the weights by default."""

from __future__ import annotations

import json
import sys

from service.runtime.command_settings import ExportSettings


def main(settings: ExportSettings) -> int:
    from service.model.weights_files import MANIFEST

    if not (settings.weights_dir / MANIFEST).is_file():
        print(
            f"actionmesh export: {settings.weights_dir} is not a weights directory (no {MANIFEST}); "
            "pass --weights-dir (see `actionmesh train`)",
            file=sys.stderr,
        )
        return 1
    try:
        from service.model.export import export
    except ImportError as exc:  # the onnx extra is not installed
        print(
            f"actionmesh export: {exc.name} is missing: pip install 'actionmesh[onnx]'",
            file=sys.stderr,
        )
        return 1
    output_dir = settings.output_dir or settings.weights_dir
    written = export(settings.weights_dir, output_dir, settings.format, int8=settings.int8)
    sizes = {path.name: path.stat().st_size for path in written}
    if settings.json_output:
        print(
            json.dumps({"format": settings.format, "output_dir": str(output_dir), "files": sizes})
        )
    else:
        for name, size in sizes.items():
            print(f"{output_dir / name}  {size / 1e6:.2f} MB")
    return 0
