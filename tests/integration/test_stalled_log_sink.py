"""A coordinator whose log sink stops taking lines (a log pipe the collector stopped reading, a
stalled disk) keeps answering robots: a real coordinator at DEBUG (a line per step) logs into
a pipe this test stops reading, until the pipe is full and beyond."""

from __future__ import annotations

import fcntl
import os
import subprocess
import termios
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from chaos.reference import observations
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime import ready_file
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.scraping import metric
from tests.support.waiting import wait_for

F_GETPIPE_SZ = 1032  # fcntl: the pipe's capacity in bytes (Linux)
PAGE_BYTES = 4096  # a pipe fills a page at a time
STEPS_WHILE_STALLED = 800  # "step answered" lines (about 200 B each): over twice a 64 KiB pipe
STEP_TIMEOUT_S = 5.0  # generous (a shared machine); a step held by the pipe waits for good


class PipeReader:
    """The read end of the pipe a process logs into: read into `taken` while `reading` is
    set, until the writer is gone; a stopped reader leaves the process's lines in the pipe
    until it is full."""

    def __init__(self) -> None:
        self.fd, self.write_fd = os.pipe()
        self.taken = bytearray()
        self.reading = threading.Event()
        self.reading.set()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self.reading.wait() and (chunk := os.read(self.fd, 1 << 16)):
            self.taken += chunk

    def waiting_bytes(self) -> int:
        """What the writer put in the pipe that nobody has read."""
        buf = bytearray(4)
        fcntl.ioctl(self.fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, "little")

    def capacity(self) -> int:
        return fcntl.fcntl(self.fd, F_GETPIPE_SZ)

    def read_to_the_end(self) -> None:
        """Once the writer is gone (its end closed): everything it wrote is in `taken`."""
        self.reading.set()
        self._thread.join(10)
        os.close(self.fd)


@contextmanager
def coordinator_logging_into_a_pipe(
    cluster: LocalCluster, work_dir: Path
) -> Iterator[tuple[dict[str, int], PipeReader]]:
    """Another coordinator on the cluster, at DEBUG, its output a pipe the test reads: its
    ports and the pipe."""
    reader = PipeReader()
    ready_path = work_dir / "coordinator-piped.ready.json"
    command = cluster.coordinator_command("coordinator-piped", 0, "--log-level", "DEBUG")
    try:
        child = subprocess.Popen(
            [*command, "--ready-file", str(ready_path)],
            stdin=subprocess.DEVNULL,
            stdout=reader.write_fd,
            stderr=subprocess.STDOUT,
        )
    finally:
        os.close(reader.write_fd)  # the child's copy is the only writer
    try:
        wait_for(
            lambda: ready_file.read(ready_path) is not None or child.poll() is not None,
            60,
            "the coordinator ready (or gone)",
        )
        ports = ready_file.read(ready_path)
        assert ports is not None, f"the coordinator exited with {child.returncode}"
        yield ports, reader
    finally:
        reader.reading.set()  # what the coordinator queued is written as it exits
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        reader.read_to_the_end()
    assert child.returncode == 0, reader.taken[-2000:].decode(errors="replace")


def test_a_coordinator_whose_log_pipe_is_full_keeps_answering(tmp_path: Path) -> None:
    with (
        LocalCluster(cluster_settings(tmp_path / "cluster"), SMALL_MODEL) as cluster,
        coordinator_logging_into_a_pipe(cluster, tmp_path) as (ports, pipe),
    ):
        address = f"127.0.0.1:{ports['grpc_port']}"
        obs = observations(0, STEPS_WHILE_STALLED + 1, SMALL_MODEL.observation_dim)
        with grpc.insecure_channel(address) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            sid = stub.OpenSession(session_pb2.OpenSessionRequest(client_id="robot"), timeout=10)
            pipe.reading.clear()
            failed = []
            for seq in range(1, STEPS_WHILE_STALLED + 1):
                request = session_pb2.StepRequest(
                    session_id=sid.session_id,
                    seq=seq,
                    observation=tensor_codec.encode(obs[seq - 1]),
                )
                try:
                    stub.Step(request, timeout=STEP_TIMEOUT_S)
                except grpc.RpcError as exc:
                    failed.append((seq, exc.code().name))
                    break
            assert failed == [], f"steps failed while the log pipe was not read: {failed}"
            # The sink really stalled: the pipe is full, bar less than a page that no line fits.
            assert pipe.waiting_bytes() > pipe.capacity() - PAGE_BYTES
            dropped = metric(ports["metrics_port"], "actionmesh_log_lines_dropped_total")
            assert dropped == 0
    # Once read again, the coordinator's queued lines came through: the last step's included.
    lines = pipe.taken.decode(errors="replace")
    assert f'"seq": {STEPS_WHILE_STALLED}' in lines
