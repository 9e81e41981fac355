"""The stage API serves only the cluster's own identity. With mutual TLS on, any certificate
the cluster's CA signed passes the handshake, a robot's too; a robot calling a shard directly
would bypass the coordinator's identities, ownership and admission."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from service.proto import stage_pb2, stage_pb2_grpc
from service.runtime.identity import certificate_name
from service.shard.stage_servicer import StageServicer

CLUSTER_ROLE = "shard"  # what coordinators and `status` present to shards (docs/security.md)
QUOTED_NAME_CHARS = 64  # a certificate name is the caller's text: quote a bounded part of it


class ClusterOnly(stage_pb2_grpc.StageServiceServicer):  # type: ignore[misc]
    """Wraps the stage servicer: a caller whose certificate names another identity gets
    PERMISSION_DENIED before anything runs."""

    def __init__(self, inner: StageServicer) -> None:
        self.inner = inner

    def Forward(  # noqa: N802 (gRPC method names)
        self, request: stage_pb2.ForwardRequest, context: grpc.ServicerContext
    ) -> stage_pb2.ForwardReply:
        _check(context)
        return self.inner.Forward(request, context)

    def ForwardStream(  # noqa: N802 (gRPC method names)
        self, request_iterator: Iterator[stage_pb2.ForwardRequest], context: grpc.ServicerContext
    ) -> Iterator[stage_pb2.ForwardStreamReply]:
        _check(context)
        return self.inner.ForwardStream(request_iterator, context)

    def Info(  # noqa: N802 (gRPC method names)
        self, request: stage_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> stage_pb2.InfoReply:
        _check(context)
        return self.inner.Info(request, context)


def _check(context: grpc.ServicerContext) -> None:
    name = certificate_name(context.auth_context())
    if name != CLUSTER_ROLE:
        quoted = repr((name or "")[:QUOTED_NAME_CHARS])
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the stage API serves the cluster's own certificate ({CLUSTER_ROLE}), not {quoted}",
        )
