"""The one place that turns torch tensors into `actionmesh.v1.Tensor` messages and back."""

from __future__ import annotations

import math
import sys

import torch

from service.proto import tensor_pb2

_TO_PROTO: dict[torch.dtype, int] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
    torch.int64: tensor_pb2.DTYPE_INT64,
}
_FROM_PROTO: dict[int, torch.dtype] = {v: k for k, v in _TO_PROTO.items()}

_MAX_RANK = 8  # more dimensions than any tensor of ours has; bounds what errors quote
_MAX_DIM = 2**31 - 1

if sys.byteorder != "little":  # the wire format is little-endian; we do not byte-swap
    raise ImportError("actionmesh's tensor codec supports little-endian hosts only")


class TensorDecodeError(ValueError):
    """The message does not describe a valid tensor; the text says what is wrong."""


def dtype_name(dtype: int) -> str:
    return str(tensor_pb2.DType.Name(dtype)) if dtype in tensor_pb2.DType.values() else str(dtype)


def encode(tensor: torch.Tensor) -> tensor_pb2.Tensor:
    t = tensor.detach().contiguous().cpu()
    dtype = _TO_PROTO.get(t.dtype)
    if dtype is None:
        raise ValueError(f"cannot send {t.dtype} tensors; supported: {sorted(map(str, _TO_PROTO))}")
    return tensor_pb2.Tensor(
        dtype=dtype,  # type: ignore[arg-type]
        shape=list(t.shape),
        data=t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"",
    )


def to_bytes(tensor: torch.Tensor) -> bytes:
    """The serialized Tensor message: how tensors are stored (state, observation log)."""
    return encode(tensor).SerializeToString()


def from_bytes(data: bytes) -> torch.Tensor:
    return decode(tensor_pb2.Tensor.FromString(data))


def decode(message: tensor_pb2.Tensor) -> torch.Tensor:
    """A fresh (writable, owned) tensor; raises TensorDecodeError on a malformed message."""
    dtype = _FROM_PROTO.get(message.dtype)
    if dtype is None:
        raise TensorDecodeError(f"unsupported dtype {dtype_name(message.dtype)}")
    shape = list(message.shape)
    if len(shape) > _MAX_RANK:
        raise TensorDecodeError(f"{len(shape)} dimensions; at most {_MAX_RANK}")
    if any(not 0 <= d <= _MAX_DIM for d in shape):
        raise TensorDecodeError(f"dimension out of range 0..{_MAX_DIM} in shape {shape}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(message.data) != expected:
        raise TensorDecodeError(
            f"shape {shape} of {dtype_name(message.dtype)} needs {expected} bytes, "
            f"got {len(message.data)}"
        )
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(message.data), dtype=dtype).view(shape)
