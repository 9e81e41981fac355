"""Debian packages for tools the machine lacks, without changing the system: `apt-get
download` the .debs into a cache folder and unpack them there with `dpkg-deb -x` (no
maintainer scripts run, nothing is installed). The ordinary apt client does the resolving and
downloading; only a fresh machine without package lists needs `apt-get update` (and so root)
first.

Used by the chaos suite's partitions (service/local/nft.py: nftables), and by the tests:
tests/support/prometheus.py (one static package) and tests/support/cxx_toolchain.py (the gRPC
C++ toolchain and the libraries it needs that the machine lacks).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# `apt-get -s install` prints one line per package it would unpack: "Inst NAME (VERSION ...".
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", re.MULTILINE)
# `apt-cache depends` without the other relations, and its lines naming a shared-library
# package: "  Depends: libfoo1".
_DEPENDS_ONLY = [
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
]
_DEPENDS = re.compile(r"^\s+Depends: (lib[^\s<>]+)$", re.MULTILINE)


class AptUnavailable(RuntimeError):
    """apt could not provide the packages (no apt-get, no package lists and no root, no
    network): the caller skips rather than fails."""


def _apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("apt-get") is None:
        raise AptUnavailable("apt-get is not on PATH (not a Debian machine)")
    return subprocess.run(
        ["apt-get", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def _with_lists(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`apt-get ARGS`, once more after `apt-get update` if it failed (a fresh machine has no
    package lists yet); raises AptUnavailable with apt's own words if it still fails."""
    done = _apt(*args, cwd=cwd)
    if done.returncode != 0:
        _apt("update", cwd=cwd)
        done = _apt(*args, cwd=cwd)
    if done.returncode != 0:
        raise AptUnavailable(f"apt-get {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def missing(packages: Sequence[str]) -> list[str]:
    """`packages` and every dependency the machine lacks, as NAME=VERSION, from a simulated
    install (`apt-get -s` needs no root): the set apt itself would unpack. Plus the installed
    runtime libraries those -dev packages depend on: a -dev package's `libX.so` symlink and
    its CMake config name the library beside them, so it must be unpacked there too."""
    plan = _with_lists("-s", "install", "--no-install-recommends", *packages)
    wanted = planned(plan.stdout)
    dev = [name for name in wanted if name.endswith("-dev")]
    if dev:
        depends = _run("apt-cache", "depends", *_DEPENDS_ONLY, *dev)
        for name in libraries(depends):
            if name not in wanted:
                wanted[name] = _run("dpkg-query", "-W", "-f", "${Version}", name)
    return [f"{name}={version}" for name, version in wanted.items()]


def planned(simulated: str) -> dict[str, str]:
    """NAME: VERSION of every package an `apt-get -s install` output would unpack."""
    return dict(_INST.findall(simulated))


def libraries(depends: str) -> list[str]:
    """The shared-library packages (lib*, not -dev) an `apt-cache depends` output names."""
    return [name for name in _DEPENDS.findall(depends) if not name.endswith("-dev")]


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AptUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def unpack(packages: Sequence[str], root: Path) -> list[str]:
    """Download `packages` (NAME or NAME=VERSION) and unpack them all into `root`, replacing
    what was there; returns the .deb file names. Built in a temporary sibling folder and moved
    into place at the end, so an interrupted fetch leaves no half-filled root behind."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        work = Path(tmp)
        debs_dir = work / "debs"
        debs_dir.mkdir()
        if packages:
            _with_lists("download", *packages, cwd=debs_dir)
        debs = sorted(debs_dir.glob("*.deb"))
        unpacked = work / "root"
        unpacked.mkdir()
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, timeout=300)
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
        return [deb.name for deb in debs]
