"""The public API's generated code lives in the client distribution (one copy, generated for
older runtimes too): actionmesh_client.proto.session_pb2_grpc. Kept under this name for the server's code."""

from actionmesh_client.proto.session_pb2_grpc import *  # noqa: F403
