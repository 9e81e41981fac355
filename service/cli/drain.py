"""`actionmesh drain`: an operator drains one coordinator before stopping or replacing it
(SessionService.Drain, admin scope): it turns NOT_SERVING, opens no new session, and its
robots move to the other coordinators without a failed step."""

from __future__ import annotations

import json
import sys

import grpc

from actionmesh_client.client_tls import ClientTls, open_channel
from service.proto import session_pb2, session_pb2_grpc
from service.runtime.command_settings import DrainSettings
from state.redis_url import read_secret


def main(settings: DrainSettings) -> int:
    """0 when the coordinator drains (or already did); 1 when it refused or was not reached."""
    if not settings.coordinator:
        raise SystemExit("drain: pass --coordinator host:port (`actionmesh up` prints them)")
    metadata: tuple[tuple[str, str], ...] = ()
    if settings.token_file is not None:
        try:
            metadata = (("authorization", f"Bearer {read_secret(settings.token_file)}"),)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"drain: token file: {exc}") from exc
    credentials = None
    if settings.tls_dir is not None:
        credentials = ClientTls.from_dir(settings.tls_dir, settings.identity).credentials()
    with open_channel(settings.coordinator, credentials) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        try:
            reply = stub.Drain(
                session_pb2.DrainRequest(grace_s=settings.grace_s),
                metadata=metadata,
                timeout=settings.timeout_s,
            )
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            print(f"drain: {settings.coordinator}: {code}: {details}", file=sys.stderr)
            return 1
    if settings.json_output:
        print(
            json.dumps(
                {
                    "coordinator": settings.coordinator,
                    "grace_left_s": reply.grace_left_s,
                    "already_draining": reply.already_draining,
                }
            )
        )
    else:
        print(
            f"coordinator {settings.coordinator} "
            f"{'was already draining' if reply.already_draining else 'is draining'}: no new "
            f"sessions; open sessions' steps served {reply.grace_left_s:.1f}s more, then "
            "refused. Stop or restart it once its robots have moved."
        )
    return 0
