from actionmesh_client.proto import tensor_pb2 as _tensor_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVE_MODE_UNSPECIFIED: _ClassVar[ServeMode]
    SERVE_MODE_FULL: _ClassVar[ServeMode]
    SERVE_MODE_EARLY_EXIT: _ClassVar[ServeMode]
    SERVE_MODE_FALLBACK: _ClassVar[ServeMode]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_SAFETY: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_BEST_EFFORT: _ClassVar[Priority]
SERVE_MODE_UNSPECIFIED: ServeMode
SERVE_MODE_FULL: ServeMode
SERVE_MODE_EARLY_EXIT: ServeMode
SERVE_MODE_FALLBACK: ServeMode
PRIORITY_UNSPECIFIED: Priority
PRIORITY_SAFETY: Priority
PRIORITY_NORMAL: Priority
PRIORITY_BEST_EFFORT: Priority

class ActionSpec(_message.Message):
    __slots__ = ("observation_dim", "horizon", "joints", "action_period_ms", "joint_names")
    OBSERVATION_DIM_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    JOINTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    JOINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    observation_dim: int
    horizon: int
    joints: int
    action_period_ms: float
    joint_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, observation_dim: _Optional[int] = ..., horizon: _Optional[int] = ..., joints: _Optional[int] = ..., action_period_ms: _Optional[float] = ..., joint_names: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("ttl_s", "client_id", "wait_replicas", "request_id")
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ttl_s: float
    client_id: str
    wait_replicas: int
    request_id: str
    def __init__(self, ttl_s: _Optional[float] = ..., client_id: _Optional[str] = ..., wait_replicas: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class OpenSessionReply(_message.Message):
    __slots__ = ("session_id", "ttl_s", "model_version", "action_spec", "wait_replicas")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPEC_FIELD_NUMBER: _ClassVar[int]
    WAIT_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ttl_s: float
    model_version: str
    action_spec: ActionSpec
    wait_replicas: int
    def __init__(self, session_id: _Optional[str] = ..., ttl_s: _Optional[float] = ..., model_version: _Optional[str] = ..., action_spec: _Optional[_Union[ActionSpec, _Mapping]] = ..., wait_replicas: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "seq", "observation", "priority", "timestamp_s", "observation_id", "tick", "budget_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TICK_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    observation: _tensor_pb2.Tensor
    priority: Priority
    timestamp_s: float
    observation_id: int
    tick: int
    budget_ms: float
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., observation: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., timestamp_s: _Optional[float] = ..., observation_id: _Optional[int] = ..., tick: _Optional[int] = ..., budget_ms: _Optional[float] = ...) -> None: ...

class StepTiming(_message.Message):
    __slots__ = ("queue_ms", "stages_ms", "total_ms", "stage_ms", "stage_compute_ms", "load_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    STAGES_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    STAGE_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    stages_ms: float
    total_ms: float
    stage_ms: _containers.RepeatedScalarFieldContainer[float]
    stage_compute_ms: _containers.RepeatedScalarFieldContainer[float]
    load_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., stages_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., stage_ms: _Optional[_Iterable[float]] = ..., stage_compute_ms: _Optional[_Iterable[float]] = ..., load_ms: _Optional[float] = ...) -> None: ...

class StepReply(_message.Message):
    __slots__ = ("session_id", "seq", "action", "serve_mode", "exit_stage", "confidence", "model_version", "timing", "observation_timestamp_s", "batch_size", "replayed_steps", "state_reset", "observation_id", "first_action_tick")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SERVE_MODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_STAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_STEPS_FIELD_NUMBER: _ClassVar[int]
    STATE_RESET_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_ACTION_TICK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    action: _tensor_pb2.Tensor
    serve_mode: ServeMode
    exit_stage: int
    confidence: float
    model_version: str
    timing: StepTiming
    observation_timestamp_s: float
    batch_size: int
    replayed_steps: int
    state_reset: bool
    observation_id: int
    first_action_tick: int
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., action: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., serve_mode: _Optional[_Union[ServeMode, str]] = ..., exit_stage: _Optional[int] = ..., confidence: _Optional[float] = ..., model_version: _Optional[str] = ..., timing: _Optional[_Union[StepTiming, _Mapping]] = ..., observation_timestamp_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., replayed_steps: _Optional[int] = ..., state_reset: bool = ..., observation_id: _Optional[int] = ..., first_action_tick: _Optional[int] = ...) -> None: ...

class StepError(_message.Message):
    __slots__ = ("code", "message", "current_seq", "reason", "retry_after_s", "status")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    current_seq: int
    reason: str
    retry_after_s: float
    status: _status_pb2.Status
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., current_seq: _Optional[int] = ..., reason: _Optional[str] = ..., retry_after_s: _Optional[float] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class StreamStepsReply(_message.Message):
    __slots__ = ("seq", "reply", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reply: StepReply
    error: StepError
    def __init__(self, seq: _Optional[int] = ..., reply: _Optional[_Union[StepReply, _Mapping]] = ..., error: _Optional[_Union[StepError, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class StageStateInfo(_message.Message):
    __slots__ = ("stage", "seq")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    stage: int
    seq: int
    def __init__(self, stage: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "seq", "ttl_left_s", "model_version", "stage_states", "observation_log_depth", "client_id", "action_spec", "wait_replicas")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TTL_LEFT_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_STATES_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_LOG_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPEC_FIELD_NUMBER: _ClassVar[int]
    WAIT_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    ttl_left_s: float
    model_version: str
    stage_states: _containers.RepeatedCompositeFieldContainer[StageStateInfo]
    observation_log_depth: int
    client_id: str
    action_spec: ActionSpec
    wait_replicas: int
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., ttl_left_s: _Optional[float] = ..., model_version: _Optional[str] = ..., stage_states: _Optional[_Iterable[_Union[StageStateInfo, _Mapping]]] = ..., observation_log_depth: _Optional[int] = ..., client_id: _Optional[str] = ..., action_spec: _Optional[_Union[ActionSpec, _Mapping]] = ..., wait_replicas: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionReply(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: bool
    def __init__(self, closed: bool = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("grace_s",)
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    def __init__(self, grace_s: _Optional[float] = ...) -> None: ...

class DrainReply(_message.Message):
    __slots__ = ("grace_left_s", "already_draining")
    GRACE_LEFT_S_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DRAINING_FIELD_NUMBER: _ClassVar[int]
    grace_left_s: float
    already_draining: bool
    def __init__(self, grace_left_s: _Optional[float] = ..., already_draining: bool = ...) -> None: ...
