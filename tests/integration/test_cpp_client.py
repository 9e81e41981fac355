"""The C++ example client (examples/cpp) against a real local cluster that requires bearer
tokens: built with CMake from the public protos and Debian's gRPC packages
(tests/support/cxx_toolchain.py), it opens a session with its token, steps it 100 times
checking every reply (seq, serve mode, a finite action of the spec's shape) and closes it; a
refused or unreachable call prints its status code, message and the coordinator's reason."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.local.apt_cache import AptUnavailable
from service.local.embedded_redis import free_port
from service.local.local_cluster import LocalCluster
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.cxx_toolchain import Toolchain, toolchain
from tests.support.locked_cluster import Tokens, make_identities, stored_sessions

# The first run downloads the toolchain (~30 MB of .debs) and builds (~25 s of CPU at -O1).
pytestmark = pytest.mark.timeout(900)

SOURCE = Path(__file__).resolve().parents[2] / "examples" / "cpp"
STEPS = 100
SUMMARY = re.compile(
    r"^SUMMARY steps=(?P<steps>\d+) p50_ms=(?P<p50>[\d.]+) p99_ms=(?P<p99>[\d.]+) "
    r"full=(?P<full>\d+) early_exit=(?P<early_exit>\d+) fallback=(?P<fallback>\d+) "
    r"session=(?P<session>\S+)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_identities(tmp_path_factory.mktemp("secrets"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[LocalCluster]:
    overrides = {"auth": "token", "identities_file": tokens.path}
    with LocalCluster(
        cluster_settings(tmp_path_factory.mktemp("cpp")),
        model=SMALL_MODEL,
        coordinator_overrides=overrides,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Toolchain, Path]:
    """The toolchain and the client binary, built outside the source tree."""
    started = time.monotonic()
    try:
        found = toolchain()
    except AptUnavailable as error:
        pytest.skip(f"no C++ gRPC toolchain: not installed, and apt cannot fetch it: {error}")
    fetched = time.monotonic()
    binary = found.build(SOURCE, tmp_path_factory.mktemp("cpp-build"))
    print(
        f"C++ toolchain {found.prefix or 'system'} in {fetched - started:.1f} s"
        f" ({len(found.packages)} packages unpacked: {' '.join(found.packages) or 'cached'});"
        f" client built in {time.monotonic() - fetched:.1f} s"
    )
    return found, binary


def run_client(
    built: tuple[Toolchain, Path], *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    found, binary = built
    env = found.environment()
    env.pop("ACTIONMESH_TOKEN", None)
    if token is not None:
        env["ACTIONMESH_TOKEN"] = token
    return subprocess.run(
        [str(binary), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cpp_client_steps_a_session_and_closes_it(
    built: tuple[Toolchain, Path], cluster: LocalCluster, tokens: Tokens
) -> None:
    token = tokens.by_identity["alice"]
    done = run_client(built, "--target", cluster.address, "--steps", str(STEPS), token=token)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = SUMMARY.search(done.stdout)
    assert summary is not None, done.stdout
    print(summary.group(0))
    assert int(summary["steps"]) == STEPS
    # A healthy cluster serves every step from the full model.
    assert (int(summary["full"]), int(summary["early_exit"]), int(summary["fallback"])) == (
        STEPS,
        0,
        0,
    )
    assert 0 < float(summary["p50"]) <= float(summary["p99"])
    # 100 steps committed its state to the store; the close at the end removed it.
    # Only the id's first characters are printed: it is a credential.
    assert len(summary["session"]) == 8
    assert f"closed session {summary['session']}" in done.stdout
    assert not any(s.startswith(summary["session"]) for s in stored_sessions(cluster.redis_url))


def test_cpp_client_prints_the_coordinators_refusal(
    built: tuple[Toolchain, Path], cluster: LocalCluster
) -> None:
    done = run_client(built, "--target", cluster.address)  # no token
    assert done.returncode == 1
    assert "OpenSession failed: status 16 UNAUTHENTICATED: " in done.stderr, done.stderr
    assert "(reason: unauthenticated)" in done.stderr
    assert "SUMMARY" not in done.stdout


def test_cpp_client_prints_status_when_no_coordinator_answers(
    built: tuple[Toolchain, Path],
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    done = run_client(built, "--target", nobody, "--deadline-ms", "500")
    assert done.returncode == 1
    assert "OpenSession failed: status 14 UNAVAILABLE: " in done.stderr, done.stderr
    assert "(no coordinator reason" in done.stderr
    assert "SUMMARY" not in done.stdout
