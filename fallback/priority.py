"""A step's priority class, shared by the degrade policy and admission control."""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """Lower value = more urgent. Values equal `actionmesh.v1.Priority`'s, so mapping is a cast.

    The proto's `PRIORITY_UNSPECIFIED` (0) is not a class here: the caller decides what an
    unset priority means (NORMAL is the natural choice) before it reaches admission.
    """

    SAFETY = 1
    NORMAL = 2
    BEST_EFFORT = 3
