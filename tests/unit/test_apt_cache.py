"""Reading apt's output for service/local/apt_cache.py: which packages a simulated install
would unpack (new ones and upgrades, with their versions), and which runtime libraries the -dev
packages name (not other -dev packages, tools or virtual packages)."""

from __future__ import annotations

from service.local.apt_cache import libraries, planned

SIMULATED = """\
NOTE: This is only a simulation!
Reading package lists...
The following NEW packages will be installed:
  libabsl-dev libgrpc++-dev
Inst libabsl-dev (20220623.1-1+deb12u2 Debian:12.11/stable [amd64])
Inst libssl3 [3.0.15-1~deb12u1] (3.0.19-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst libgrpc++-dev (1.51.1-3+b1 Debian:12.11/stable [amd64])
Conf libabsl-dev (20220623.1-1+deb12u2 Debian:12.11/stable [amd64])
"""

DEPENDS = """\
libgrpc-dev
  Depends: libgrpc29
  Depends: pkgconf
  Depends: zlib1g-dev
  Depends: libabsl-dev
  Depends: <libc-dev>
    libc6-dev
libabsl-dev
  Depends: libabsl20220623
"""


def test_planned_reads_new_packages_and_upgrades_with_their_versions() -> None:
    assert planned(SIMULATED) == {
        "libabsl-dev": "20220623.1-1+deb12u2",
        "libssl3": "3.0.19-1~deb12u1",
        "libgrpc++-dev": "1.51.1-3+b1",
    }


def test_libraries_are_the_runtime_library_dependencies_only() -> None:
    assert libraries(DEPENDS) == ["libgrpc29", "libabsl20220623"]
