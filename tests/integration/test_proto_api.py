"""The public API's protos pass `buf lint` (buf's STANDARD rules, with the exceptions
service/client_dist/buf.yaml gives reasons for) and `buf breaking` against the last released
protos (service/client_dist/api_released/): a field renumbered, retyped or removed fails here
before any robot sees it. buf comes from the npm registry (tests/support/buf.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import buf as buf_tool

RELEASED = sorted((buf_tool.CLIENT_DIST / "api_released").iterdir())[-1]
CURRENT = buf_tool.CLIENT_DIST / buf_tool.API


@pytest.fixture(scope="module")
def buf() -> Path:
    found = buf_tool.binary()
    if found is None:
        pytest.skip("neither buf nor npm (to install @bufbuild/buf) is on this machine")
    return found


def test_the_public_protos_pass_buf_lint(buf: Path, tmp_path: Path) -> None:
    module = buf_tool.workspace(CURRENT, tmp_path)
    done = buf_tool.run(buf, "lint", str(module), "--path", str(module / buf_tool.API))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_public_protos_keep_the_last_releases_wire_and_names(buf: Path, tmp_path: Path) -> None:
    released = buf_tool.workspace(RELEASED, tmp_path / "released")
    current = buf_tool.workspace(CURRENT, tmp_path / "current")
    done = buf_tool.run(buf, "breaking", str(current), "--against", str(released))
    assert done.returncode == 0, f"against {RELEASED.name}: {done.stdout}{done.stderr}"


def test_buf_breaking_catches_a_retyped_field(buf: Path, tmp_path: Path) -> None:
    """The check can fail: seq as uint32 instead of uint64 is reported."""
    changed = tmp_path / "changed"
    shutil.copytree(CURRENT, changed)
    session = changed / "session.proto"
    text = session.read_text()
    assert "uint64 seq = 2;" in text
    session.write_text(text.replace("uint64 seq = 2;", "uint32 seq = 2;", 1))
    released = buf_tool.workspace(RELEASED, tmp_path / "released")
    current = buf_tool.workspace(changed, tmp_path / "current")
    done = buf_tool.run(buf, "breaking", str(current), "--against", str(released))
    assert done.returncode != 0 and "changed type" in done.stdout, done.stdout + done.stderr
