"""Start a foreign binary (redis-server, Sentinel, etcd) so that it dies with us.

Our own children ask the kernel for SIGTERM on their parent's death themselves
(`--die-with-parent`, child_process.py); a foreign binary cannot, and a preexec_fn is unsafe
in a process running gRPC threads (supervised.py). So the binary is started through this
module: a short-lived interpreter that asks for PR_SET_PDEATHSIG, checks that its parent is
still there, and execs the binary in its own place (same PID; the setting survives execve).
A kill -9 of `actionmesh up` (or of a test run) then takes its Redis and etcd with it.

The kernel's "parent" is the thread that spawned the child: spawn from a thread that lives
as long as the children should (the main thread, or a long-lived supervisor).
"""

from __future__ import annotations

import os
import sys

from service.local.child_process import die_with_parent


def guarded(argv: list[str]) -> list[str]:
    """The command line that runs `argv` under this guard, bound to the calling process."""
    return [sys.executable, "-m", "service.local.orphan_guard", str(os.getpid()), *argv]


def main(args: list[str]) -> None:
    parent_pid, command = int(args[0]), args[1:]
    die_with_parent(parent_pid)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
