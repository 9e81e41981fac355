"""Prometheus's own tools for the tests: `promtool` (check metrics, config and rules; test
rules) and a real `prometheus` server.

No PyPI or npm package ships them, so they come from Debian's `prometheus` package through
the ordinary apt client: `apt-get download` (no install: nothing runs as a service) into a
cache folder, unpacked with `dpkg-deb -x`. Binaries already on PATH are used instead. The
cache is kept between runs (~100 MB unpacked); delete it to fetch again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(
    os.environ.get(
        "ACTIONMESH_PROMETHEUS_CACHE", Path.home() / ".cache" / "actionmesh" / "prometheus"
    )
)
PACKAGE = "prometheus"


def binary(name: str) -> Path:
    """Path of `promtool` or `prometheus`, fetched from Debian's package on first use."""
    on_path = shutil.which(name)
    if on_path is not None and shutil.which("promtool") and shutil.which("prometheus"):
        return Path(on_path)
    unpacked = CACHE / "usr" / "bin" / name
    if not unpacked.is_file():
        _fetch()
    return unpacked


def _apt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def _fetch() -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
        work = Path(tmp)
        done = _apt("download", PACKAGE, cwd=work)
        if done.returncode != 0:  # no package lists yet on a fresh machine
            _apt("update", cwd=work)
            done = _apt("download", PACKAGE, cwd=work)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get download {PACKAGE} failed: {done.stderr.strip()}")
        (deb,) = work.glob(f"{PACKAGE}_*.deb")
        unpacked = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=300)
        if CACHE.exists():
            shutil.rmtree(CACHE)
        unpacked.rename(CACHE)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS`; its exit code and output for the caller to judge."""
    return subprocess.run(
        [str(binary("promtool")), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
