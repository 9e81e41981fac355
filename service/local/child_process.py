"""Our own child processes (shards, coordinators): start, wait until ready, stop by PID.

Children die with their parent: each is started with `--die-with-parent PID` and asks the
kernel for SIGTERM when that parent goes (PR_SET_PDEATHSIG), so a killed `actionmesh up` or
test run leaves nothing running. The child does it itself at start-up, not in a preexec_fn:
code between fork and exec is unsafe in a parent that runs gRPC threads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

from service.local.supervised import Supervised
from service.runtime import ready_file

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a child: SIGTERM when the parent exits (or already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        raise SystemExit(f"parent {parent_pid} is gone; not starting")


class ChildExited(RuntimeError):
    """The child died before it became ready; the message holds the tail of its log."""


class ChildProcess:
    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.ready_path = log_dir / f"{name}.ready.json"
        self.log_path = log_dir / f"{name}.log"
        self.args = [*args, "--ready-file", str(self.ready_path)]
        self._proc: Supervised | None = None
        self.ports: dict[str, int] = {}

    @staticmethod
    def actionmesh(*argv: str) -> list[str]:
        """The command line that runs `actionmesh <argv>` with this interpreter."""
        return [sys.executable, "-m", "service.cli", "--die-with-parent", str(os.getpid()), *argv]

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} not started"
        return self._proc.pid

    def start(self) -> ChildProcess:
        self.ready_path.unlink(missing_ok=True)
        self._proc = Supervised(self.name, self.args, self.log_path)
        return self

    def wait_ready(self, timeout_s: float) -> dict[str, int]:
        """Poll for the ready file; fail loudly if the child exits or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (code := self.returncode()) is not None:
                raise ChildExited(f"{self.name} exited with code {code}:\n{self.log_tail()}")
            ports = ready_file.read(self.ready_path)
            if ports is not None:
                self.ports = ports
                return ports
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s:\n{self.log_tail()}")

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode()

    def signal(self, signum: int) -> None:
        """Send signum if it still runs (SIGSTOP/SIGCONT to hang and resume it); no wait."""
        if self._proc is not None:
            self._proc.signal(signum)

    def kill(self) -> None:
        """SIGKILL, as a crash would; for tests and chaos."""
        if self._proc is not None:
            self._proc.kill()

    def terminate(self) -> None:
        """SIGTERM without waiting: a graceful stop begins."""
        self.signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL after timeout_s."""
        if self._proc is not None:
            self._proc.stop(timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        return "(no log)" if self._proc is None else self._proc.log_tail(lines)
