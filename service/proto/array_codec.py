"""The numpy tensor codec lives in the client distribution (actionmesh_client.array_codec),
which both the client and the torch-free shard runtime use. Kept under this name for the
server's code."""

from actionmesh_client.array_codec import (
    ITEMSIZE,
    MAX_DIM,
    MAX_RANK,
    TensorDecodeError,
    decode,
    dtype_name,
    encode,
    layout,
    short_dtype_name,
)

__all__ = [
    "ITEMSIZE",
    "MAX_DIM",
    "MAX_RANK",
    "TensorDecodeError",
    "decode",
    "dtype_name",
    "encode",
    "layout",
    "short_dtype_name",
]
