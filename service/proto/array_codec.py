"""`actionmesh.v1.Tensor` messages as numpy arrays, without torch: the torch-free shard
runtime's codec. tensor_codec (torch tensors) checks messages with `layout` from here, so both
refuse the same messages with the same words."""

from __future__ import annotations

import math
import sys

import numpy as np
import numpy.typing as npt

from service.proto import tensor_pb2

# Byte width of every dtype on the wire (bfloat16 has no numpy dtype: checked, not decoded).
ITEMSIZE: dict[int, int] = {
    tensor_pb2.DTYPE_FLOAT32: 4,
    tensor_pb2.DTYPE_FLOAT16: 2,
    tensor_pb2.DTYPE_BFLOAT16: 2,
    tensor_pb2.DTYPE_FLOAT64: 8,
    tensor_pb2.DTYPE_INT64: 8,
}
_TO_NUMPY: dict[int, np.dtype[np.generic]] = {
    tensor_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DTYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NUMPY: dict[np.dtype[np.generic], int] = {v: k for k, v in _TO_NUMPY.items()}

MAX_RANK = 8  # more dimensions than any tensor of ours has; bounds what errors quote
MAX_DIM = 2**31 - 1

if sys.byteorder != "little":  # the wire format is little-endian; we do not byte-swap
    raise ImportError("actionmesh's tensor codec supports little-endian hosts only")


class TensorDecodeError(ValueError):
    """The message does not describe a valid tensor; the text says what is wrong."""


def dtype_name(dtype: int) -> str:
    return str(tensor_pb2.DType.Name(dtype)) if dtype in tensor_pb2.DType.values() else str(dtype)


def short_dtype_name(dtype: int) -> str:
    """float32, bfloat16, ...: how errors name a message's dtype (as torch names its own)."""
    return dtype_name(dtype).removeprefix("DTYPE_").lower()


def layout(message: tensor_pb2.Tensor) -> list[int]:
    """The message's shape once its dtype, rank, dimensions and byte count are known good;
    raises TensorDecodeError otherwise."""
    itemsize = ITEMSIZE.get(message.dtype)
    if itemsize is None:
        raise TensorDecodeError(f"unsupported dtype {dtype_name(message.dtype)}")
    shape = list(message.shape)
    if len(shape) > MAX_RANK:
        raise TensorDecodeError(f"{len(shape)} dimensions; at most {MAX_RANK}")
    if any(not 0 <= d <= MAX_DIM for d in shape):
        raise TensorDecodeError(f"dimension out of range 0..{MAX_DIM} in shape {shape}")
    expected = math.prod(shape) * itemsize
    if len(message.data) != expected:
        raise TensorDecodeError(
            f"shape {shape} of {dtype_name(message.dtype)} needs {expected} bytes, "
            f"got {len(message.data)}"
        )
    return shape


def decode(message: tensor_pb2.Tensor) -> npt.NDArray[np.generic]:
    """A read-only array over the message's bytes (no copy); TensorDecodeError on a malformed
    message or a dtype numpy lacks (bfloat16)."""
    shape = layout(message)
    dtype = _TO_NUMPY.get(message.dtype)
    if dtype is None:
        raise TensorDecodeError(f"dtype {dtype_name(message.dtype)} has no numpy equivalent")
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


def encode(array: npt.NDArray[np.generic]) -> tensor_pb2.Tensor:
    dtype = _FROM_NUMPY.get(array.dtype.newbyteorder("<"))
    if dtype is None:
        raise ValueError(f"cannot send {array.dtype} arrays; supported: float32/16/64, int64")
    return tensor_pb2.Tensor(
        dtype=dtype,  # type: ignore[arg-type]
        shape=list(array.shape),
        data=np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(),
    )
