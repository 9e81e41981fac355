"""The start/stop shape shared by the processes we run: `with X(...) as x:` starts and stops."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Lifecycle:
    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
