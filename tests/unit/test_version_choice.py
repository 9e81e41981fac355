"""The version a session's step runs on: pure choice over a version snapshot."""

from __future__ import annotations

import pytest

from service.coordinator.routing.version_choice import (
    NoPipeline,
    Stay,
    Switch,
    VersionChoice,
    VersionSnapshot,
    choose_version,
    start_version,
)


def snapshot(
    whole: set[str],
    offered: set[str] | None = None,
    desired: str | None = None,
    last_start: str | None = None,
) -> VersionSnapshot:
    return VersionSnapshot(
        whole=frozenset(whole),
        offered=frozenset(offered if offered is not None else whole),
        desired=desired,
        serving=max(whole) if whole else None,
        last_start=last_start,
    )


@pytest.mark.parametrize(
    ("name", "seen", "current", "want"),
    [
        ("new session, nothing desired", snapshot({"v1"}), None, Stay(version="v1")),
        (
            "new session, desired whole",
            snapshot({"v1", "v2"}, desired="v1"),
            None,
            Stay(version="v1"),
        ),
        (
            "new session, desired not whole",
            snapshot({"v1"}, {"v1", "v2"}, "v2"),
            None,
            Stay(version="v1"),
        ),
        ("new session, nothing whole", snapshot(set(), {"v1"}), None, NoPipeline()),
        (
            "new session mid-outage: on the version sessions last started on, served degraded",
            snapshot(set(), {"v1", "v2"}, last_start="v1"),
            None,
            Stay(version="v1"),
        ),
        (
            "new session mid-outage, the last start version offered nowhere",
            snapshot(set(), {"v2"}, last_start="v1"),
            None,
            NoPipeline(),
        ),
        (
            "new session: a whole version wins over the last start",
            snapshot({"v2"}, {"v1", "v2"}, last_start="v1"),
            None,
            Stay(version="v2"),
        ),
        ("on the desired version", snapshot({"v1", "v2"}, desired="v2"), "v2", Stay(version="v2")),
        (
            "promoted: switch once the new version is whole",
            snapshot({"v1", "v2"}, desired="v2"),
            "v1",
            Switch(current="v1", target="v2"),
        ),
        (
            "promoted, not whole yet: stay",
            snapshot({"v1"}, {"v1", "v2"}, "v2"),
            "v1",
            Stay(version="v1"),
        ),
        (
            "rolled back mid-switch",
            snapshot({"v1", "v2"}, desired="v1"),
            "v1",
            Stay(version="v1"),
        ),
        (
            "own version retired: switch to the serving one",
            snapshot({"v3"}),
            "v1",
            Switch(current="v1", target="v3"),
        ),
        (
            "own version partly offered: stay, served degraded",
            snapshot({"v3"}, {"v1", "v3"}),
            "v1",
            Stay(version="v1"),
        ),
        (
            "a whole version not vetted (interface differs) is never switched to",
            snapshot(set(), {"v1", "v9"}, "v9"),
            "v1",
            Stay(version="v1"),
        ),
    ],
)
def test_choose_version(
    name: str, seen: VersionSnapshot, current: str | None, want: VersionChoice
) -> None:
    assert choose_version(seen, current) == want, name


def test_a_view_older_than_the_one_that_moved_the_session_does_not_move_it_back() -> None:
    """Two coordinators briefly disagree (one saw the rollback to v1, one still sees v2): the
    lagging one must not move the session the other moved; a newer desired version does."""
    lagging = VersionSnapshot(
        whole=frozenset({"v1", "v2"}),
        offered=frozenset({"v1", "v2"}),
        desired="v2",
        desired_revision=100,
        serving="v1",
    )
    assert choose_version(lagging, "v1", moved_at_revision=105) == Stay(version="v1")
    assert choose_version(lagging, "v1", moved_at_revision=100) == Switch(current="v1", target="v2")
    assert choose_version(lagging, "v1") == Switch(current="v1", target="v2")


def test_start_version_is_the_whole_version_a_new_session_gets() -> None:
    assert start_version(snapshot({"v1", "v2"}, desired="v1", last_start="v2")) == "v1"
    assert start_version(snapshot(set(), {"v1"}, last_start="v1")) is None  # none is whole
