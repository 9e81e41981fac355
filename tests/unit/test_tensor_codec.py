"""The tensor codec: torch tensors <-> actionmesh.v1.Tensor messages, and malformed messages."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import cast

import pytest
import torch

from service.proto import tensor_codec, tensor_pb2
from service.proto.tensor_codec import TensorDecodeError

pytestmark = pytest.mark.timeout(30)

DTYPES = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
    torch.int64: tensor_pb2.DTYPE_INT64,
}
SHAPES = [(5,), (2, 3), (2, 3, 4), (0,), (3, 0, 2), (0, 0)]


def sample(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Distinct, non-trivial values (negative, fractional, large) in the given dtype."""
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.int64:
        return torch.randint(-(2**40), 2**40, shape, dtype=dtype, generator=generator)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * 100).to(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
def test_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = sample(shape, dtype)
    message = tensor_codec.encode(tensor)

    assert message.dtype == DTYPES[dtype]
    assert list(message.shape) == list(shape)
    assert len(message.data) == tensor.numel() * tensor.element_size()

    decoded = tensor_codec.decode(message)
    assert decoded.dtype == dtype
    assert decoded.shape == tensor.shape
    assert torch.equal(decoded, tensor)


def test_round_trip_survives_serialisation() -> None:
    tensor = sample((4, 3), torch.bfloat16)
    wire = tensor_codec.encode(tensor).SerializeToString()
    assert torch.equal(tensor_codec.decode(tensor_pb2.Tensor.FromString(wire)), tensor)


def test_round_trip_keeps_special_float_values() -> None:
    tensor = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40])
    decoded = tensor_codec.decode(tensor_codec.encode(tensor))
    assert torch.equal(decoded.view(torch.int32), tensor.view(torch.int32))  # bit for bit


def test_non_contiguous_tensors_are_sent_in_row_major_order() -> None:
    tensor = torch.arange(12, dtype=torch.float32).view(3, 4).t()
    assert not tensor.is_contiguous()
    decoded = tensor_codec.decode(tensor_codec.encode(tensor))
    assert decoded.shape == (4, 3)
    assert torch.equal(decoded, tensor)


def test_tensors_that_require_grad_are_encoded() -> None:
    tensor = torch.ones(2, 2, requires_grad=True)
    assert torch.equal(tensor_codec.decode(tensor_codec.encode(tensor)), torch.ones(2, 2))


def test_wire_format_is_little_endian_row_major() -> None:
    message = tensor_codec.encode(torch.tensor([[1.0, -2.5], [3.0, 0.5]]))
    assert message.data == struct.pack("<4f", 1.0, -2.5, 3.0, 0.5)

    message = tensor_codec.encode(torch.tensor([1, -2], dtype=torch.int64))
    assert message.data == struct.pack("<2q", 1, -2)


def test_hand_built_message_decodes() -> None:
    message = tensor_pb2.Tensor(
        dtype=tensor_pb2.DTYPE_FLOAT64, shape=[2], data=struct.pack("<2d", 0.25, -8.0)
    )
    assert torch.equal(
        tensor_codec.decode(message), torch.tensor([0.25, -8.0], dtype=torch.float64)
    )


# --- decoded tensors own their memory -----------------------------------------------------


def test_decoded_tensor_is_writable_and_does_not_alias_the_message_bytes() -> None:
    tensor = sample((2, 3), torch.float32)
    raw = tensor_codec.encode(tensor).data
    # protobuf hands out a fresh bytes object per access, so to see aliasing the test must hold
    # the very object decode reads: a stand-in message with the same three fields.
    message = cast(
        tensor_pb2.Tensor,
        SimpleNamespace(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2, 3], data=raw),
    )
    raw_before = bytes(bytearray(raw))

    decoded = tensor_codec.decode(message)
    decoded.add_(1.0)
    decoded[0, 0] = 1234.0

    assert raw == raw_before
    assert torch.equal(tensor_codec.decode(message), tensor)


def test_two_decodes_of_one_message_are_independent() -> None:
    message = tensor_codec.encode(torch.zeros(4, dtype=torch.int64))
    first, second = tensor_codec.decode(message), tensor_codec.decode(message)
    first.fill_(7)
    assert torch.equal(second, torch.zeros(4, dtype=torch.int64))


def test_decoded_empty_tensor_is_writable() -> None:
    decoded = tensor_codec.decode(tensor_codec.encode(torch.zeros(0, 3)))
    decoded.add_(1.0)
    assert decoded.shape == (0, 3)


# --- malformed messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "data", "needed"),
    [
        ([2, 3], b"\0" * 23, 24),
        ([2, 3], b"\0" * 25, 24),
        ([2, 3], b"", 24),
        ([0], b"\0" * 4, 0),
        ([], b"", 4),
    ],
)
def test_wrong_byte_length_is_refused(shape: list[int], data: bytes, needed: int) -> None:
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=shape, data=data)
    with pytest.raises(TensorDecodeError) as caught:
        tensor_codec.decode(message)
    text = str(caught.value)
    assert f"needs {needed} bytes" in text
    assert f"got {len(data)}" in text
    assert "DTYPE_FLOAT32" in text


def test_wrong_byte_length_counts_the_dtype_item_size() -> None:
    # 8 bytes are right for two float32 values, wrong for two float64 values.
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT64, shape=[2], data=b"\0" * 8)
    with pytest.raises(TensorDecodeError, match="needs 16 bytes, got 8"):
        tensor_codec.decode(message)


@pytest.mark.parametrize(
    ("dtype", "named"), [(tensor_pb2.DTYPE_UNSPECIFIED, "DTYPE_UNSPECIFIED"), (42, "42")]
)
def test_unknown_dtype_is_refused(dtype: int, named: str) -> None:
    message = tensor_pb2.Tensor(dtype=dtype, shape=[1], data=b"\0" * 4)  # type: ignore[arg-type]
    with pytest.raises(TensorDecodeError, match=f"unsupported dtype {named}"):
        tensor_codec.decode(message)


@pytest.mark.parametrize("shape", [[-1], [2, -3], [0, -1], [-2, -2]])
def test_negative_dimension_is_refused(shape: list[int]) -> None:
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=shape, data=b"")
    with pytest.raises(TensorDecodeError, match="dimension out of range") as caught:
        tensor_codec.decode(message)
    assert str(shape) in str(caught.value)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(TensorDecodeError, ValueError)


# --- edge cases that once failed ---------------------------------------------------------


def test_zero_dim_tensor_round_trips() -> None:
    tensor = torch.tensor(2.5)
    assert torch.equal(tensor_codec.decode(tensor_codec.encode(tensor)), tensor)


def test_overflowing_empty_shape_is_a_decode_error() -> None:
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2**62, 2**62, 0], data=b"")
    with pytest.raises(TensorDecodeError):
        tensor_codec.decode(message)
