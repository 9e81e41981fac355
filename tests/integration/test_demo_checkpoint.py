"""The demo's shipped checkpoint is what `actionmesh train` makes with the flags it names:
retrained here from seed 0, the version (the digest of config and tensors) is the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.bench.demo import DEMO_WEIGHTS
from service.model.weights_files import read_info
from service.runtime.command_settings import DEMO_TRAINING_FLAGS


def test_retraining_with_the_shipped_flags_gives_the_shipped_version(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    # Latency through a cluster goes into quality.json only, not into the version: skipped.
    done = subprocess.run(
        [
            *(sys.executable, "-m", "service.cli", "train", *DEMO_TRAINING_FLAGS),
            *("--no-cluster-latency", "--output-dir", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_info(out).version == read_info(DEMO_WEIGHTS).version
