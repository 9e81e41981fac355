"""The one place that turns torch tensors into `actionmesh.v1.Tensor` messages and back."""

from __future__ import annotations

import torch

from service.proto import tensor_pb2
from service.proto.array_codec import TensorDecodeError, dtype_name, layout

__all__ = ["TensorDecodeError", "decode", "dtype_name", "encode", "from_bytes", "to_bytes"]

_TO_PROTO: dict[torch.dtype, int] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
    torch.int64: tensor_pb2.DTYPE_INT64,
}
_FROM_PROTO: dict[int, torch.dtype] = {v: k for k, v in _TO_PROTO.items()}


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
    shape = layout(message)  # the checks every codec makes (array_codec)
    dtype = _FROM_PROTO[message.dtype]
    if not message.data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(message.data), dtype=dtype).view(shape)
