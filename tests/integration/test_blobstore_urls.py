"""Blob stores chosen by URL. Not a unit test: creating the S3 client looks for credentials,
and without any configured botocore asks the EC2 instance metadata endpoint over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoint.blobstore import open_blobstore
from checkpoint.local_blobstore import LocalBlobStore
from checkpoint.s3_blobstore import S3BlobStore


def test_open_blobstore_urls(tmp_path: Path) -> None:
    assert isinstance(open_blobstore(f"file://{tmp_path}"), LocalBlobStore)
    s3 = open_blobstore("s3://bucket/a/b?endpoint_url=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.options.region) == ("bucket", "a/b", "eu-west-1")
    assert s3.options.endpoint_url == "http://127.0.0.1:1"
    for bad in ("http://x/y", "s3:///nobucket", "file://host/path", "s3://b/p?colour=red"):
        with pytest.raises(ValueError):
            open_blobstore(bad)
    store = open_blobstore(f"file://{tmp_path / 'keys'}")
    for key in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(ValueError):
            store.exists(key)
