"""The systemd units in deploy/systemd pass `systemd-analyze verify` without a warning (an
unknown key or value is only a warning there, so stderr must be empty too)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/actionmesh/venv/bin/actionmesh"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this machine"
)


@pytest.mark.parametrize(
    ("unit", "instance"),
    [("actionmesh-coordinator.service", None), ("actionmesh-shard@.service", "1")],
)
def test_unit_verifies_cleanly(tmp_path: Path, unit: str, instance: str | None) -> None:
    # verify checks that ExecStart's binary exists: point it at this checkout's actionmesh
    # (the only change; the install path is documented in deploy/README.md).
    here = Path(sys.executable).parent / "actionmesh"
    text = (UNITS / unit).read_text()
    assert INSTALLED in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, str(here)))
    name = unit.replace("@.", f"@{instance}.") if instance else unit
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"./{name}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.strip()) == (0, "")
    assert "Type=notify" in text  # readiness: the processes send READY=1 (test_sd_notify.py)
