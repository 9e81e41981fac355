"""A private S3 endpoint (the moto server) on 127.0.0.1 (or the caller's `host`): the chaos
cluster's checkpoint store and the S3 tests' endpoint. Real HTTP and real boto3 calls; nothing leaves the machine."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from service.local.embedded_redis import free_port
from service.local.lifecycle import Lifecycle
from service.local.orphan_guard import guarded
from service.local.supervised import Supervised

REGION = "us-east-1"
# moto accepts any credentials; these are what the children's boto3 finds in the environment.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
STOP_TIMEOUT_S = 10.0


class MotoS3(Lifecycle):
    """`with MotoS3(log_dir) as s3:` starts the server (its log in log_dir) and stops it at the
    end; `s3.endpoint` is its http:// URL. Started through the orphan guard, as redis-server
    and etcd are: a run killed with -9 takes it along."""

    def __init__(self, log_dir: Path, start_timeout_s: float = 30.0, host: str = "127.0.0.1"):
        self.host = host
        self.log_path = log_dir / "moto-s3.log"
        self._start_timeout_s = start_timeout_s
        self._proc: Supervised | None = None
        self.endpoint = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None, "moto server not started"
        return self._proc.pid

    def url(self, bucket: str, prefix: str) -> str:
        """The s3:// URL of a store under `prefix` in `bucket` here (see create_bucket)."""
        return f"s3://{bucket}/{prefix}?endpoint_url={self.endpoint}&region={REGION}"

    def start(self) -> Self:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the chaos suite's S3 endpoint needs moto: pip install 'actionmesh[chaos]'"
            ) from None
        port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)]
        self._proc = Supervised("moto-s3", guarded(argv), self.log_path)
        self.endpoint = f"http://{self.host}:{port}"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(STOP_TIMEOUT_S)
            self._proc = None

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            if not self._proc.running:
                raise RuntimeError(
                    f"moto server exited with {self._proc.returncode()}, see {self.log_path}"
                )
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server not ready after {self._start_timeout_s}s"
                    ) from None
                time.sleep(0.05)

    def create_bucket(self, bucket: str) -> None:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=bucket)
