"""`actionmesh up` killed with -9 takes every process it started with it: shards and
coordinator (--die-with-parent), and redis-server and etcd (service/local/orphan_guard.py); so
does a process running the chaos suite's S3 endpoint (the moto server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def descendants(root: int) -> dict[int, str]:
    """Every process below `root`, by PID, with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = command_line(child)
                frontier.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_9_and_collect_survivors(
    owner: subprocess.Popen[str], ready: Callable[[str], bool], expected: tuple[str, ...]
) -> dict[int, str]:
    """Once a line of `owner`'s output is `ready` and its descendants include each `expected`
    command, kill it with -9 and return the descendants still running 10 s later; those are
    killed too, so that nothing leaks into other tests."""
    children: dict[int, str] = {}
    try:
        assert owner.stdout is not None
        assert any(ready(line) for line in owner.stdout), "it ended before it was ready"
        children = descendants(owner.pid)
        commands = " ".join(children.values())
        assert all(command in commands for command in expected), children
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.1)
        return {pid: cmd for pid, cmd in children.items() if alive(pid)}
    finally:
        owner.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_kill_9_of_up_leaves_no_process_behind(tmp_path: Path) -> None:
    work_dir = tmp_path / "up"
    up = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", "0", "--work-dir", str(work_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    left = kill_9_and_collect_survivors(
        up, lambda line: "press Ctrl-C" in line, ("redis-server", "etcd")
    )
    assert left == {}, f"still running after `up` was killed with -9: {left}"


OWNS_AN_S3_ENDPOINT = """
import sys, time
from pathlib import Path
from chaos.moto_s3 import MotoS3
with MotoS3(Path(sys.argv[1])):
    print("ready", flush=True)
    time.sleep(120)
"""


def test_kill_9_of_the_owner_of_an_s3_endpoint_takes_the_moto_server_along(
    tmp_path: Path,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNS_AN_S3_ENDPOINT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    left = kill_9_and_collect_survivors(
        owner, lambda line: line.strip() == "ready", ("moto.server",)
    )
    assert left == {}, f"still running after its owner was killed with -9: {left}"
