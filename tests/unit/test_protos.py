"""Generated code is current (both servers' reflection: tests/integration/test_reflection.py)."""

from __future__ import annotations

from pathlib import Path

from service.proto import generate

PROTO_DIR = Path(generate.__file__).parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = sorted((tmp_path / "service" / "proto").iterdir())
    assert fresh, "the generator wrote nothing"
    for path in fresh:
        checked_in = PROTO_DIR / path.name
        assert checked_in.exists(), (
            f"{path.name} is not checked in: run python -m service.proto.generate"
        )
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run python -m service.proto.generate"
        )
