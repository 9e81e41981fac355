"""One OS process we started: the only place in service/local that spawns, signals and stops one.

Used by our own children (child_process.py) and by the embedded Redis, Sentinel and etcd
launchers, which keep their own readiness checks, ports and restarts. Output (stdout and
stderr) is appended to a log file, so a restarted process's log follows the earlier one.

No preexec_fn (e.g. PR_SET_PDEATHSIG): it makes CPython run at-fork hooks in the child before
exec, and with gRPC threads alive in this process that child can crash (seen as etcd exiting
with -11). Own session unless new_session=False: a terminal's Ctrl-C reaches only us, and we
stop our children in order.

Every process is spawned by one long-lived thread (`_SPAWNER`): the kernel's parent of a
child that asks for PR_SET_PDEATHSIG (ours with --die-with-parent, foreign binaries through
orphan_guard) is the *thread* that forked it, so a child started from a short-lived thread (a
fault injector restarting a shard) would be sent SIGTERM the moment that thread returned.
"""

from __future__ import annotations

import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_log = logging.getLogger(__name__)
# Lives as long as this process (never shut down before interpreter exit): see the docstring.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


class Supervised:
    """`argv`, started on construction with its output appended to `log_path`.

    `name` (e.g. "shard-0-r1", "etcd name=member0") prefixes what is logged about it.
    """

    def __init__(
        self, name: str, argv: list[str], log_path: Path, *, new_session: bool = True
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.log_offset = log.tell()  # where this run's output begins
            self._popen = _SPAWNER.submit(
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            ).result()
        _log.info("%s started pid=%d log=%s", name, self.pid, log_path)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def returncode(self) -> int | None:
        """None while it runs; once it has exited, its code (-N for signal N)."""
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self.returncode() is None

    def signal(self, signum: int) -> None:
        """Send signum (SIGTERM, SIGSTOP, SIGCONT...) if it still runs; no wait."""
        self._popen.send_signal(signum)  # a no-op once it has been reaped

    def kill(self) -> None:
        """SIGKILL, as a crash would, and wait until it is gone."""
        if self.running:
            self._popen.kill()
            self._popen.wait()
            _log.info("%s pid=%d killed", self.name, self.pid)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, wait, SIGKILL if it is still there after timeout_s."""
        if not self.running:
            return
        self._popen.terminate()
        try:
            self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _log.warning(
                "%s pid=%d still up %.1fs after SIGTERM, killing", self.name, self.pid, timeout_s
            )
            self.kill()

    def log_tail(self, lines: int) -> str:
        """The last `lines` lines of its log (earlier runs' included)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_since_start(self) -> str:
        """What this run (not an earlier one) has written to the log so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")
