"""A shard's --cpus: a core this process may not use is a usage error, named."""

from __future__ import annotations

import os

import pytest

from service.shard.shard_process import pin


def test_a_core_the_machine_does_not_offer_is_refused_with_the_cores_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(SystemExit) as exited:
        pin([max(before) + 64])
    assert exited.value.code == 2
    assert f"may run on cores {sorted(before)}" in capsys.readouterr().err
    assert os.sched_getaffinity(0) == before, "nothing was changed"


def test_no_cores_leaves_the_process_where_it_was() -> None:
    before = os.sched_getaffinity(0)
    pin([])
    assert os.sched_getaffinity(0) == before
