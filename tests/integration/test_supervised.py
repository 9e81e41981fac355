"""Supervised: one OS process with its log; signals and stops as the launchers rely on them."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from service.local.orphan_guard import guarded
from service.local.supervised import Supervised


def sh(script: str, log_path: Path, *, new_session: bool = True) -> Supervised:
    return Supervised("test", ["/bin/sh", "-c", script], log_path, new_session=new_session)


def wait_for(proc: Supervised, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in proc.log_since_start():
        assert proc.running and time.monotonic() < deadline, proc.log_tail(10)
        time.sleep(0.01)


def wait_exited(proc: Supervised) -> int:
    deadline = time.monotonic() + 10
    while (code := proc.returncode()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return code


def test_output_is_appended_and_each_run_sees_its_own(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "child.log"  # the directory is made
    first = sh("echo one; exit 3", log_path)
    assert wait_exited(first) == 3
    second = sh("echo two >&2", log_path)
    assert wait_exited(second) == 0
    assert second.log_since_start() == "two\n"
    assert second.log_tail(1) == "two"
    assert second.log_tail(5) == "one\ntwo"


def test_stop_terminates_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    polite = sh("echo up; exec sleep 30", tmp_path / "polite.log")
    wait_for(polite, "up")
    polite.stop(timeout_s=5)
    assert polite.returncode() == -signal.SIGTERM

    stubborn = sh("trap '' TERM; echo up; exec sleep 30", tmp_path / "stubborn.log")
    wait_for(stubborn, "up")
    started = time.monotonic()
    stubborn.stop(timeout_s=0.2)
    assert stubborn.returncode() == -signal.SIGKILL
    assert time.monotonic() - started >= 0.2
    stubborn.stop(timeout_s=5)  # gone already: nothing to do


def test_sigstop_pauses_and_kill_crashes(tmp_path: Path) -> None:
    proc = sh("echo up; exec sleep 30", tmp_path / "child.log")
    wait_for(proc, "up")
    proc.signal(signal.SIGSTOP)
    assert proc.running  # stopped is not exited
    proc.signal(signal.SIGCONT)
    proc.kill()
    assert proc.returncode() == -signal.SIGKILL
    proc.signal(signal.SIGCONT)  # reaped: no signal goes to a recycled pid
    proc.kill()


def test_own_session_unless_asked_otherwise(tmp_path: Path) -> None:
    own = sh("exec sleep 30", tmp_path / "own.log")
    shared = sh("exec sleep 30", tmp_path / "shared.log", new_session=False)
    try:
        assert os.getsid(own.pid) == own.pid
        assert os.getsid(shared.pid) == os.getsid(0)
    finally:
        own.kill()
        shared.kill()


def wait_exec(proc: Supervised, program: bytes) -> None:
    """Until the process runs `program` (a guard has set PR_SET_PDEATHSIG, then exec'd it)."""
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes().startswith(program + b"\0"):
        assert proc.running and time.monotonic() < deadline, proc.log_tail(10)
        time.sleep(0.01)


def test_a_child_started_from_a_thread_outlives_that_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG follows the thread that forked: a shard a fault injector restarted
    must not be stopped when the injector thread returns (the chaos runner's were)."""
    started: list[Supervised] = []

    def inject() -> None:
        started.append(Supervised("guarded", guarded(["sleep", "30"]), tmp_path / "g.log"))
        wait_exec(started[0], b"sleep")

    injector = threading.Thread(target=inject)
    injector.start()
    injector.join()
    (child,) = started
    try:
        time.sleep(0.3)  # a SIGTERM sent as the thread exited has arrived by now
        assert child.running, child.log_tail(10)
    finally:
        child.stop(timeout_s=5)
