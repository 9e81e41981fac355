"""The client library robot controllers import: `from service.client import ActionMeshClient`.

Sessions, steps (unary or over one stream), retries and coordinator failover are in
session_client; the typed errors a step can raise are in client_errors.
"""

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
    "ActionMeshClient",
    "ActionMeshClientError",
    "ActionSpec",
    "InvalidObservation",
    "SeqConflict",
    "ServiceUnavailable",
    "Session",
    "SessionInfo",
    "SessionNotFound",
    "StepResult",
    "StepShed",
    "StepStream",
]
