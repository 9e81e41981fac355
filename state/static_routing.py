"""A routing table from configuration: one fixed replica per stage, no leadership backend."""

from __future__ import annotations

from collections.abc import Callable

from state.leadership import StageView


class StaticRoutingTable:
    """Implements RoutingTable for `--stage-addresses`: the table never changes."""

    def __init__(self, views: dict[int, StageView]) -> None:
        self._views = dict(views)

    def start(self) -> None:
        pass

    def snapshot(self) -> dict[int, StageView]:
        return self._views

    def desired_version(self) -> str | None:
        return None  # no backend to set one: sessions stay on their version

    def desired_revision(self) -> int:
        return 0

    @property
    def connected(self) -> bool:
        return True

    def subscribe(self, callback: Callable[[dict[int, StageView]], None]) -> None:
        pass  # nothing ever changes

    def stop(self) -> None:
        pass
