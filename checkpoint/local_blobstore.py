"""A folder as a blob store (`file:///path`): what `actionmesh up` uses instead of S3.

Writes go to a temp file beside the target, are fsynced and renamed into place, and the
directory is fsynced. Conditional writes hold an flock on `<root>/.lock` across the
read-compare-rename, so two processes cannot both win. The etag is the content's sha256.
A key's last-modified time is its file's mtime (`touch` sets it to now)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from checkpoint.blobstore import Tagged, check_conditions, check_key
from checkpoint.durable import atomic_write, fsync_dir, is_temp_name
from checkpoint.errors import InvalidInput, NotFound, PreconditionFailed

LOCK_NAME = ".lock"


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise InvalidInput(f"blob store root {root} must be an absolute path")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex}")
        try:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)

    def get_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} not found in {self.root}") from exc

    def get(self, key: str) -> Tagged | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return Tagged(data=data, etag=hashlib.sha256(data).hexdigest())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def touch(self, key: str) -> bool:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        keys = []
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if is_temp_name(name) or name == LOCK_NAME:
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_modified(self, prefix: str) -> dict[str, datetime]:
        found = {}
        for key in self.list(prefix):
            try:
                mtime = self._path(key).stat().st_mtime
            except FileNotFoundError:  # deleted since it was listed
                continue
            found[key] = datetime.fromtimestamp(mtime, UTC)
        return found

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def put_if(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        check_conditions(if_match, if_none_match)
        with self._locked():
            current = self.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key} already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key} changed since it was read (etag {if_match})")
            self.put_bytes(key, data)
        return hashlib.sha256(data).hexdigest()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
