"""S3 (or any S3-compatible endpoint) as a blob store: `s3://bucket/prefix`.

The only file that imports boto3. Large files go through boto3's managed transfer (multipart
above `multipart_threshold_bytes`). Conditional writes use S3's If-Match / If-None-Match on
PutObject. Retryable failures (connection errors, timeouts, throttling, 5xx) are retried with
tenacity (bounded attempts, exponential backoff with jitter) and counted; everything else
(missing keys, failed preconditions, access denied) surfaces at once. Every operation gives
up within `S3Options.deadline_s` on a store that does not answer (blobstore.attempt_timeouts).
`touch` copies an object onto itself (MetadataDirective=REPLACE), which S3 allows and which
sets its LastModified to now; objects above 5 GiB, CopyObject's limit, by a multipart copy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from prometheus_client import Counter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from checkpoint.blobstore import (
    S3Options,
    Tagged,
    attempt_timeouts,
    check_conditions,
    check_key,
)
from checkpoint.errors import (
    CheckpointError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StoreNotFound,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

log = logging.getLogger(__name__)

RETRIES = Counter(
    "actionmesh_checkpoint_retries_total",
    "Blob store calls retried after a retryable error.",
    ["operation"],
)

_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ConditionalRequestConflict",  # another conditional write was in flight: ask again
        "500",
        "502",
        "503",
        "504",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_INVALID_CODES = frozenset({"InvalidBucketName", "InvalidArgument", "InvalidRequest"})
_MAX_SINGLE_COPY_BYTES = 5 * 1024**3  # CopyObject's limit: a multipart copy above it
# Not the store's fault and not fixed by asking again: the settings are wrong.
_SETTINGS_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ParamValidationError,
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.InvalidRegionError,
)

T = TypeVar("T")


def _client_error(exc: BaseException) -> botocore.exceptions.ClientError | None:
    """The S3 error reply behind `exc` (boto3's managed upload wraps it in
    S3UploadFailedError, keeping it as the context)."""
    if isinstance(exc, S3UploadFailedError):
        exc = exc.__context__ or exc
    return exc if isinstance(exc, botocore.exceptions.ClientError) else None


def _code(exc: BaseException) -> str:
    error = _client_error(exc)
    return str(error.response.get("Error", {}).get("Code", "")) if error is not None else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def is_retryable(exc: BaseException) -> bool:
    if _client_error(exc) is not None:
        return _code(exc) in _RETRYABLE_CODES
    return isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | S3UploadFailedError,
    )


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, options: S3Options) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        connect_s, read_s = attempt_timeouts(options)
        try:
            session = boto3.session.Session(
                aws_access_key_id=options.access_key_id,
                aws_secret_access_key=options.secret_access_key,
                aws_session_token=options.session_token,
                region_name=options.region,
                profile_name=options.profile,
            )
            self.client: S3Client = session.client(
                "s3",
                endpoint_url=options.endpoint_url,
                config=botocore.config.Config(
                    connect_timeout=connect_s,
                    read_timeout=read_s,
                    # One request per call: tenacity retries, counted. (botocore's own
                    # "max_attempts" counts retries, not attempts: 1 meant two requests.)
                    retries={"total_max_attempts": 1, "mode": "standard"},
                ),
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise InvalidInput(f"S3 store s3://{bucket}/{prefix}: {_one_line(exc)}") from exc
        self.transfer = TransferConfig(
            multipart_threshold=options.multipart_threshold_bytes,
            multipart_chunksize=options.multipart_chunksize_bytes,
            num_download_attempts=1,  # tenacity retries, within the deadline
        )
        self.copy_transfer = TransferConfig(
            multipart_threshold=_MAX_SINGLE_COPY_BYTES,
            multipart_chunksize=_MAX_SINGLE_COPY_BYTES // 8,
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        def count(state: RetryCallState) -> None:
            RETRIES.labels(operation=operation).inc()
            outcome = state.outcome.exception() if state.outcome else None
            log.warning(
                "blobstore=s3://%s/%s op=%s attempt=%d retrying after %r",
                self.bucket,
                self.prefix,
                operation,
                state.attempt_number,
                outcome,
            )

        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            # No attempt starts past the deadline (attempts that time out fit in it anyway).
            stop=stop_after_attempt(self.options.max_attempts)
            | stop_before_delay(self.options.deadline_s),
            wait=wait_exponential_jitter(
                multiplier=0.1, jitter=0.2, max=self.options.retry_max_wait_s
            ),
            before_sleep=count,
            reraise=True,
        )
        where = f"{operation} on s3://{self.bucket}/{self.prefix}"
        try:
            return retrying(fn)
        except (botocore.exceptions.ClientError, S3UploadFailedError) as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                raise StoreNotFound(
                    f"{where}: bucket {self.bucket} does not exist (check the --remote URL)"
                ) from exc
            if code in _NOT_FOUND_CODES:
                raise NotFound(f"{where}: {_one_line(exc)}") from exc
            if code in _PRECONDITION_CODES:
                raise PreconditionFailed(f"{operation}: {_one_line(exc)}") from exc
            if code in _INVALID_CODES:
                raise InvalidInput(f"{where}: {_one_line(exc)}") from exc
            if is_retryable(exc):
                raise StoreUnavailable(
                    f"{where} failed after {self.options.max_attempts} attempts: {_one_line(exc)}"
                ) from exc
            raise CheckpointError(f"{where} refused: {_one_line(exc)}") from exc
        except _SETTINGS_ERRORS as exc:
            raise InvalidInput(f"{where}: {_one_line(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreUnavailable(
                f"{where} failed after {self.options.max_attempts} attempts: {_one_line(exc)}; "
                "check endpoint_url and network"
            ) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._call("put", lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data))

    def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        self._call(
            "upload",
            lambda: self.client.upload_file(str(path), self.bucket, full, Config=self.transfer),
        )

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        try:
            self._call(
                "download",
                lambda: self.client.download_file(
                    self.bucket, full, str(path), Config=self.transfer
                ),
            )
        except StoreNotFound:
            raise
        except NotFound as exc:
            raise NotFound(f"s3://{self.bucket}/{full} not found") from exc

    def get(self, key: str) -> Tagged | None:
        full = self._key(key)

        def fetch() -> Tagged:
            reply = self.client.get_object(Bucket=self.bucket, Key=full)
            return Tagged(data=reply["Body"].read(), etag=reply["ETag"])

        try:
            return self._call("get", fetch)
        except StoreNotFound:
            raise
        except NotFound:
            return None

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call("head", lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except StoreNotFound:
            raise
        except NotFound:  # a HEAD reply has no body: a missing bucket looks the same
            return False
        return True

    def touch(self, key: str) -> bool:
        full = self._key(key)
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": full}
        try:
            self._call(
                "touch",
                lambda: self.client.copy(
                    source,
                    self.bucket,
                    full,
                    ExtraArgs={"MetadataDirective": "REPLACE"},
                    Config=self.copy_transfer,
                ),
            )
        except StoreNotFound:
            raise
        except NotFound:  # the copy's HEAD of the source: a missing bucket looks the same
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        return sorted(self.list_modified(prefix))

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise ValueError(f"invalid blob key prefix {prefix!r}")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(f"{self.prefix}/") if self.prefix else 0

        def collect() -> dict[str, datetime]:
            found: dict[str, datetime] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                found |= {
                    item["Key"][strip:]: item["LastModified"] for item in page.get("Contents", [])
                }
            return found

        return self._call("list", collect)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def put_if(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        check_conditions(if_match, if_none_match)
        full = self._key(key)
        attempts = 0

        def put() -> str:
            nonlocal attempts
            attempts += 1
            if if_match is not None:
                reply = self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, IfMatch=if_match
                )
            else:
                reply = self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*"
                )
            return reply["ETag"]

        try:
            return self._call("put_if", put)
        except StoreNotFound:
            raise
        except NotFound as exc:  # If-Match on a key that is gone
            raise PreconditionFailed(f"{key} no longer exists (expected etag {if_match})") from exc
        except PreconditionFailed as exc:
            # A retry after a lost reply can fail on our own first write: if the object now
            # holds exactly our bytes, that write won.
            if attempts > 1 and (now := self.get(key)) is not None and now.data == data:
                return now.etag
            expected = f"etag {if_match}" if if_match else "no object"
            raise PreconditionFailed(
                f"{key} changed since it was read (expected {expected})"
            ) from exc
