"""A child process announces its bound ports by writing a small JSON file atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write(path: Path, **ports: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **ports}))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, int] | None:
    try:
        data: dict[str, int] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data
