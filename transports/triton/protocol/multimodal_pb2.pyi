from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import Any as _Any, ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DT_UNSPECIFIED: _ClassVar[DataType]
    DT_FP32: _ClassVar[DataType]
    DT_FP16: _ClassVar[DataType]
    DT_INT64: _ClassVar[DataType]
    DT_INT32: _ClassVar[DataType]
    DT_INT8: _ClassVar[DataType]
    DT_UINT8: _ClassVar[DataType]
    DT_BOOL: _ClassVar[DataType]
    DT_FP64: _ClassVar[DataType]
    DT_INT16: _ClassVar[DataType]
    DT_UINT16: _ClassVar[DataType]
    DT_UINT32: _ClassVar[DataType]
    DT_UINT64: _ClassVar[DataType]
    DT_BF16: _ClassVar[DataType]
    DT_BYTES: _ClassVar[DataType]

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SRC_UNSPECIFIED: _ClassVar[Source]
    SRC_TENSOR: _ClassVar[Source]
    SRC_IMAGE: _ClassVar[Source]
    SRC_AUDIO: _ClassVar[Source]
    SRC_TEXT: _ClassVar[Source]

class StreamEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEV_UNSPECIFIED: _ClassVar[StreamEvent]
    SEV_DATA: _ClassVar[StreamEvent]
    SEV_START: _ClassVar[StreamEvent]
    SEV_END: _ClassVar[StreamEvent]

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[AckStatus]
    BAD_REQUEST: _ClassVar[AckStatus]
    INTERNAL: _ClassVar[AckStatus]
    UNSUPPORTED: _ClassVar[AckStatus]
    UNAUTHENTICATED: _ClassVar[AckStatus]
    UNAVAILABLE: _ClassVar[AckStatus]
DT_UNSPECIFIED: DataType
DT_FP32: DataType
DT_FP16: DataType
DT_INT64: DataType
DT_INT32: DataType
DT_INT8: DataType
DT_UINT8: DataType
DT_BOOL: DataType
DT_FP64: DataType
DT_INT16: DataType
DT_UINT16: DataType
DT_UINT32: DataType
DT_UINT64: DataType
DT_BF16: DataType
DT_BYTES: DataType
SRC_UNSPECIFIED: Source
SRC_TENSOR: Source
SRC_IMAGE: Source
SRC_AUDIO: Source
SRC_TEXT: Source
SEV_UNSPECIFIED: StreamEvent
SEV_DATA: StreamEvent
SEV_START: StreamEvent
SEV_END: StreamEvent
OK: AckStatus
BAD_REQUEST: AckStatus
INTERNAL: AckStatus
UNSUPPORTED: AckStatus
UNAUTHENTICATED: AckStatus
UNAVAILABLE: AckStatus

class Meta(_message.Message):
    __slots__ = ("correlation_id", "note")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    note: str
    def __init__(self, correlation_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Optional[_Iterable[int]] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: Shape
    dtype: DataType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Union[Shape, _Mapping[str, _Any]]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., **kwargs: _Any) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("model", "model_version", "timeout_secs", "inputs", "outputs", "binary_outputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BINARY_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    timeout_secs: float
    inputs: _containers.RepeatedCompositeFieldContainer[InputSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputSpec]
    binary_outputs: bool
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., timeout_secs: _Optional[float] = ..., inputs: _Optional[_Iterable[_Union[InputSpec, _Mapping[str, _Any]]]] = ..., outputs: _Optional[_Iterable[_Union[OutputSpec, _Mapping[str, _Any]]]] = ..., binary_outputs: _Optional[bool] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: Shape
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Union[Shape, _Mapping[str, _Any]]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DataPacket(_message.Message):
    __slots__ = ("meta", "control", "tensor", "event")
    META_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    control: Control
    tensor: Tensor
    event: StreamEvent
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping[str, _Any]]] = ..., control: _Optional[_Union[Control, _Mapping[str, _Any]]] = ..., tensor: _Optional[_Union[Tensor, _Mapping[str, _Any]]] = ..., event: _Optional[_Union[StreamEvent, str]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: Shape
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Union[Shape, _Mapping[str, _Any]]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("triton_infer_ms", "total_ms")
    TRITON_INFER_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    triton_infer_ms: float
    total_ms: float
    def __init__(self, triton_infer_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("correlation_id", "status", "message", "outputs", "timing", "index", "final")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    status: AckStatus
    message: str
    outputs: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    timing: Timing
    index: int
    final: bool
    def __init__(self, correlation_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., message: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[NamedTensor, _Mapping[str, _Any]]]] = ..., timing: _Optional[_Union[Timing, _Mapping[str, _Any]]] = ..., index: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class ModelMetadataRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class TensorMetadata(_message.Message):
    __slots__ = ("name", "dtype", "triton_dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TRITON_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    triton_dtype: str
    shape: Shape
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., triton_dtype: _Optional[str] = ..., shape: _Optional[_Union[Shape, _Mapping[str, _Any]]] = ...) -> None: ...

class ModelMetadataResponse(_message.Message):
    __slots__ = ("model", "versions", "platform", "inputs", "outputs", "ready", "max_batch_size", "decoupled")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DECOUPLED_FIELD_NUMBER: _ClassVar[int]
    model: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    platform: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    ready: bool
    max_batch_size: int
    decoupled: bool
    def __init__(self, model: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., platform: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorMetadata, _Mapping[str, _Any]]]] = ..., outputs: _Optional[_Iterable[_Union[TensorMetadata, _Mapping[str, _Any]]]] = ..., ready: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., decoupled: _Optional[bool] = ...) -> None: ...

class ReadyRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ReadyResponse(_message.Message):
    __slots__ = ("ready", "message")
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    message: str
    def __init__(self, ready: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
