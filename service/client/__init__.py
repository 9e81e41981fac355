"""The client library robot controllers import: `from service.client import ActionMeshClient`.

Sessions, steps (unary or over one stream), retries and coordinator failover are in
session_client; the typed errors a step can raise are in client_errors; playing each reply's
action chunk at the control rate, with the next chunk asked for in the background, is
action_buffer.
"""

from service.client.action_buffer import (
    ActionBuffer,
    BufferConfig,
    Command,
    Merge,
    Notice,
    Source,
    WhenDry,
)
from service.client.client_errors import (
    ActionMeshClientError,
    InvalidObservation,
    SeqConflict,
    ServiceUnavailable,
    SessionNotFound,
    StepShed,
)
from service.client.session_client import (
    ActionMeshClient,
    ActionSpec,
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
    "Command",
    "InvalidObservation",
    "Merge",
    "Notice",
    "SeqConflict",
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
