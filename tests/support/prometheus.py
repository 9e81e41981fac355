"""Prometheus's own tools for the tests: `promtool` (check metrics, config and rules; test
rules) and a real `prometheus` server.

No PyPI or npm package ships them, so they come from Debian's `prometheus` package through
the ordinary apt client: `apt-get download` (no install: nothing runs as a service) into a
cache folder, unpacked with `dpkg-deb -x` (service/local/apt_cache.py). Binaries already on
PATH are used instead. The cache is kept between runs (~100 MB unpacked); delete it to fetch
again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from service.local import apt_cache

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
        apt_cache.unpack([PACKAGE], CACHE)
    return unpacked


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
