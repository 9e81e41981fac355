"""The public API's generated code lives in the client distribution (one copy, generated for
older runtimes too): actionmesh_client.proto.tensor_pb2. Kept under this name for the server's code."""

from actionmesh_client.proto.tensor_pb2 import *  # noqa: F403
