"""actionmesh's client library for robot controllers: `from actionmesh_client import
ActionMeshClient`. Depends on grpcio, protobuf and numpy only (no torch).

Sessions, steps (unary or over one stream), retries and coordinator failover are in
session_client; the typed errors a step can raise are in client_errors; playing each reply's
action chunk at the control rate, with the next chunk asked for in the background, is
action_buffer. The public protos and their generated code are in actionmesh_client.proto.
"""

from actionmesh_client.action_buffer import (
    ActionBuffer,
    BufferConfig,
    Command,
    Event,
    Merge,
    Notice,
    Source,
    WhenDry,
)
from actionmesh_client.client_errors import (
    ActionMeshClientError,
    InvalidObservation,
    SeqConflict,
    ServiceUnavailable,
    SessionNotFound,
    StepShed,
)
from actionmesh_client.client_tls import ClientTls
from actionmesh_client.session_client import (
    ActionMeshClient,
    ActionSpec,
    Priority,
    ServeMode,
    Session,
    SessionInfo,
    StepResult,
    StepStream,
)

__all__ = [
    "ActionBuffer",
    "ActionMeshClient",
    "ActionMeshClientError",
    "ActionSpec",
    "BufferConfig",
    "ClientTls",
    "Command",
    "Event",
    "InvalidObservation",
    "Merge",
    "Notice",
    "Priority",
    "SeqConflict",
    "ServeMode",
    "ServiceUnavailable",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "Source",
    "StepResult",
    "StepShed",
    "StepStream",
    "WhenDry",
]
