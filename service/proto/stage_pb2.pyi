from service.proto import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StageItem(_message.Message):
    __slots__ = ("session_id", "seq", "input", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    input: _tensor_pb2.Tensor
    state: _tensor_pb2.Tensor
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., input: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., state: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("items", "emit_action", "model_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EMIT_ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StageItem]
    emit_action: bool
    model_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[StageItem, _Mapping]]] = ..., emit_action: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("output", "state", "action")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    output: _tensor_pb2.Tensor
    state: _tensor_pb2.Tensor
    action: _tensor_pb2.Tensor
    def __init__(self, output: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., state: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., action: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("results", "model_version", "compute_ms")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StageResult]
    model_version: str
    compute_ms: float
    def __init__(self, results: _Optional[_Iterable[_Union[StageResult, _Mapping]]] = ..., model_version: _Optional[str] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class ForwardError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ForwardStreamReply(_message.Message):
    __slots__ = ("reply", "error")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reply: ForwardReply
    error: ForwardError
    def __init__(self, reply: _Optional[_Union[ForwardReply, _Mapping]] = ..., error: _Optional[_Union[ForwardError, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("stage", "n_stages", "layer_start", "layer_end", "model_version", "model_config_json", "forward_calls_total", "forward_items_total", "replica_id", "role")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    N_STAGES_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FORWARD_CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ITEMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    stage: int
    n_stages: int
    layer_start: int
    layer_end: int
    model_version: str
    model_config_json: str
    forward_calls_total: int
    forward_items_total: int
    replica_id: str
    role: str
    def __init__(self, stage: _Optional[int] = ..., n_stages: _Optional[int] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ..., model_version: _Optional[str] = ..., model_config_json: _Optional[str] = ..., forward_calls_total: _Optional[int] = ..., forward_items_total: _Optional[int] = ..., replica_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...
