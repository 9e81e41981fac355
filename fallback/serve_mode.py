"""The serve modes, one enum from the plan to the reply (names as in `actionmesh.v1.ServeMode`)."""

from __future__ import annotations

from enum import StrEnum


class ServeMode(StrEnum):
    FULL = "FULL"
    EARLY_EXIT = "EARLY_EXIT"  # from a stage's exit head
    FALLBACK = "FALLBACK"  # the distilled student
