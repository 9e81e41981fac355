"""What a coordinator refuses before it serves: settings that do not fit the model it found."""

from __future__ import annotations

import pytest

from service.coordinator.coordinator_process import _check_joint_names
from service.runtime.settings import CoordinatorSettings


def test_joint_names_that_do_not_fit_the_model_are_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = CoordinatorSettings(joint_names=["shoulder", "elbow"])
    _check_joint_names(settings, 2)
    with pytest.raises(SystemExit) as refused:
        _check_joint_names(settings, 7)
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "actionmesh coordinator: --joint-names lists 2 names; the model has 7 joints"
    )
    _check_joint_names(CoordinatorSettings(), 7)  # none given: the spec names them joint_<i>
