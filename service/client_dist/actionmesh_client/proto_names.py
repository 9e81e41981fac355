"""The wire's enum names carry their type's prefix (SERVE_MODE_FULL, PRIORITY_SAFETY, as buf's
style asks); everything above the wire (StepResult, metrics, logs, JSON, the CLI) says the short
name (FULL, SAFETY). The two meet only here."""

from __future__ import annotations

from typing import cast

from actionmesh_client.proto import session_pb2

SERVE_MODE_PREFIX = "SERVE_MODE_"
PRIORITY_PREFIX = "PRIORITY_"


def serve_mode_name(value: int) -> str:
    """FULL for SERVE_MODE_FULL; UNSPECIFIED for 0 and for a mode newer than this code."""
    try:
        return str(session_pb2.ServeMode.Name(value)).removeprefix(SERVE_MODE_PREFIX)
    except ValueError:
        return "UNSPECIFIED"


def serve_mode_value(name: str) -> session_pb2.ServeMode:
    """SERVE_MODE_FULL's value for FULL; ValueError for a name the proto does not have."""
    return cast("session_pb2.ServeMode", session_pb2.ServeMode.Value(SERVE_MODE_PREFIX + name))


def priority_name(value: int) -> str:
    """SAFETY for PRIORITY_SAFETY; ValueError for a value the proto does not have."""
    return str(session_pb2.Priority.Name(value)).removeprefix(PRIORITY_PREFIX)


def priority_value(name: str) -> session_pb2.Priority:
    """PRIORITY_SAFETY's value for SAFETY; ValueError for a name the proto does not have."""
    return cast("session_pb2.Priority", session_pb2.Priority.Value(PRIORITY_PREFIX + name))
