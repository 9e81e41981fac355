"""Doors locked (auth = token) on a real cluster over real gRPC: who may call, whose sessions
each identity may use, and the limits (sessions and steps per identity, concurrent calls,
message size), each refused with its status and a message that says which setting; and session
ids never logged whole."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime.advertise import format_host_port
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.locked_cluster import Metadata, Tokens, make_identities, stored_sessions

pytestmark = pytest.mark.timeout(300)

DIM = SMALL_MODEL.observation_dim
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_identities(tmp_path_factory.mktemp("secrets"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[LocalCluster]:
    work_dir = tmp_path_factory.mktemp("locked")
    overrides = {
        "auth": "token",
        "identities_file": tokens.path,
        "sessions_per_identity": 3,
        "identity_steps_per_s": 0,
    }
    with LocalCluster(
        cluster_settings(work_dir), model=SMALL_MODEL, coordinator_overrides=overrides
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[session_pb2_grpc.SessionServiceStub]:
    with grpc.insecure_channel(cluster.address) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


def extra_coordinator(cluster: LocalCluster, name: str, *flags: str) -> str:
    child = cluster.start_coordinator(name, 0, *flags)
    return format_host_port("127.0.0.1", child.ports["grpc_port"])


def open_as(stub: session_pb2_grpc.SessionServiceStub, metadata: Metadata) -> str:
    reply = stub.OpenSession(
        session_pb2.OpenSessionRequest(client_id="robot"), metadata=metadata, timeout=TIMEOUT_S
    )
    return str(reply.session_id)


def step_request(session_id: str, seq: int) -> session_pb2.StepRequest:
    return session_pb2.StepRequest(
        session_id=session_id, seq=seq, observation=tensor_codec.encode(torch.zeros(DIM))
    )


def refused(call: object, request: object, metadata: Metadata = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=TIMEOUT_S)  # type: ignore[operator]
    return caught.value


def test_a_call_without_a_known_token_is_unauthenticated(
    stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    sid = open_as(stub, tokens.metadata("alice"))
    calls = [
        (stub.OpenSession, session_pb2.OpenSessionRequest()),
        (stub.Step, step_request(sid, 1)),
        (stub.GetSession, session_pb2.GetSessionRequest(session_id=sid)),
        (stub.CloseSession, session_pb2.CloseSessionRequest(session_id=sid)),
    ]
    wrong = (("authorization", "Bearer " + "x" * 43),)
    for metadata in [(), wrong, (("authorization", tokens.by_identity["alice"]),)]:
        for call, request in calls:
            error = refused(call, request, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    stream = stub.StreamSteps(iter([step_request(sid, 1)]), timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as caught:
        list(stream)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = stub.GetSession(
        session_pb2.GetSessionRequest(session_id=sid), metadata=tokens.metadata("alice")
    )
    assert info.seq == 0  # none of those calls reached the session


def test_another_identity_is_denied_the_session_and_learns_nothing_of_it(
    stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    alice, bob = tokens.metadata("alice"), tokens.metadata("bob")
    sid = open_as(stub, alice)
    stub.Step(step_request(sid, 1), metadata=alice, timeout=TIMEOUT_S)
    for call, request in [
        (stub.Step, step_request(sid, 2)),
        (stub.Step, step_request(sid, 1)),  # a retry would hand out alice's stored reply
        (stub.GetSession, session_pb2.GetSessionRequest(session_id=sid)),
        (stub.CloseSession, session_pb2.CloseSessionRequest(session_id=sid)),
    ]:
        error = refused(call, request, bob)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert sid not in (error.details() or "")
    items = list(stub.StreamSteps(iter([step_request(sid, 2)]), metadata=bob, timeout=TIMEOUT_S))
    assert [i.WhichOneof("result") for i in items] == ["error"]
    assert items[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert items[0].error.reason == "permission_denied"
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), metadata=alice)
    assert info.seq == 1
    reply = stub.Step(step_request(sid, 2), metadata=alice, timeout=TIMEOUT_S)
    assert reply.seq == 2


def test_an_admin_may_use_any_session_a_checkpoint_identity_none(
    stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    sid = open_as(stub, tokens.metadata("alice"))
    ops = tokens.metadata("ops")
    info = stub.GetSession(session_pb2.GetSessionRequest(session_id=sid), metadata=ops)
    assert info.session_id == sid
    error = refused(stub.OpenSession, session_pb2.OpenSessionRequest(), tokens.metadata("ci"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "needs step" in error.details()
    closed = stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=ops)
    assert closed.closed


def test_an_identity_may_hold_only_its_session_limit(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    bob = tokens.metadata("bob")  # holds no session before this test
    held = [open_as(stub, bob) for _ in range(3)]
    before = stored_sessions(cluster.redis_url)
    error = refused(stub.OpenSession, session_pb2.OpenSessionRequest(), bob)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sessions_per_identity" in error.details()
    assert dict(error.trailing_metadata())["actionmesh-error"] == "session_limit"
    assert stored_sessions(cluster.redis_url) == before  # the refused one is not left behind
    stub.CloseSession(session_pb2.CloseSessionRequest(session_id=held[0]), metadata=bob)
    held.append(open_as(stub, bob))
    for sid in held[1:]:
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=bob)


def test_steps_beyond_an_identitys_rate_are_refused_with_a_retry_hint(
    cluster: LocalCluster, tokens: Tokens
) -> None:
    address = extra_coordinator(cluster, "coordinator-rate", "--identity-steps-per-s", "1")
    alice = tokens.metadata("alice")
    with grpc.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        sid = open_as(stub, alice)
        codes = []
        for _ in range(10):  # a burst of 2, then 1 per second: a retry of seq 1 costs a token too
            try:
                stub.Step(step_request(sid, 1), metadata=alice, timeout=TIMEOUT_S)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                error = exc
        assert "RESOURCE_EXHAUSTED" in codes and codes[0] == "OK"
        assert "identity_steps_per_s" in error.details()
        trailers = dict(error.trailing_metadata())
        assert trailers["actionmesh-error"] == "rate_limited"
        assert 0 < float(trailers["actionmesh-retry-after-s"]) <= 1.0
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=alice)


def test_the_call_past_max_concurrent_rpcs_is_refused_not_queued(cluster: LocalCluster) -> None:
    """A coordinator with the default 64 workers holds 64 open streams; the 65th is refused
    with RESOURCE_EXHAUSTED at once (it used to queue for a thread until its deadline)."""
    address = extra_coordinator(cluster, "coordinator-open", "--auth", "off")
    held: list[queue.Queue[session_pb2.StepRequest | None]] = []
    streams = []
    with grpc.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        try:
            for i in range(64):
                requests: queue.Queue[session_pb2.StepRequest | None] = queue.Queue()
                requests.put(step_request(f"no-such-session-{i}", 1))
                stream = stub.StreamSteps(iter(requests.get, None), timeout=60)
                first = next(stream)  # the stream holds a server thread now
                assert first.error.code == grpc.StatusCode.NOT_FOUND.value[0]
                held.append(requests)
                streams.append(stream)
            started = time.monotonic()
            extra = stub.StreamSteps(iter([step_request("one-too-many", 1)]), timeout=30)
            with pytest.raises(grpc.RpcError) as caught:
                list(extra)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 10  # refused, not left to its deadline
            error = refused(stub.GetSession, session_pb2.GetSessionRequest(session_id="x"))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for requests in held:
                requests.put(None)
            for stream in streams:
                list(stream)
        time.sleep(0.2)  # once they are done, calls are served again
        error = refused(stub.GetSession, session_pb2.GetSessionRequest(session_id="x"))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_a_message_over_max_message_bytes_is_refused(cluster: LocalCluster, tokens: Tokens) -> None:
    address = extra_coordinator(cluster, "coordinator-small", "--max-message-bytes", "4096")
    alice = tokens.metadata("alice")
    with grpc.insecure_channel(address) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        sid = open_as(stub, alice)
        request = step_request(sid, 1)
        request.observation.data = b"\0" * 8192
        error = refused(stub.Step, request, alice)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        reply = stub.Step(step_request(sid, 1), metadata=alice, timeout=TIMEOUT_S)
        assert reply.seq == 1
        stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=alice)


def test_session_ids_and_tokens_are_never_logged_whole(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    alice, bob = tokens.metadata("alice"), tokens.metadata("bob")
    sid = open_as(stub, alice)
    stub.Step(step_request(sid, 1), metadata=alice, timeout=TIMEOUT_S)
    for request, metadata in [(step_request(sid, 5), alice), (step_request(sid, 2), bob)]:
        refused(stub.Step, request, metadata)  # a seq conflict and a denial: both logged
    refused(stub.Step, step_request(sid, 2), (("authorization", "Bearer " + "y" * 43),))
    stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=alice)
    time.sleep(0.5)  # the children's log lines reach their files
    logs = {path.name: path.read_text(errors="replace") for path in cluster.log_dir.glob("*.log")}
    assert any(f"session={sid[:8]}" in text for text in logs.values()), "nothing logged"
    secrets = [sid, "y" * 43, *tokens.by_identity.values()]
    leaks = [(name, s[:8]) for name, text in logs.items() for s in secrets if s in text]
    assert not leaks, f"logged whole: {leaks}"


def test_the_identities_file_is_reread_without_a_restart(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens
) -> None:
    from service.runtime.identities_file import append_token
    from service.runtime.identity import Scope

    path: Path = tokens.path
    newcomer = append_token(path, "carol", frozenset({Scope.STEP}))
    metadata = (("authorization", f"Bearer {newcomer}"),)
    deadline = time.monotonic() + 10
    while True:
        try:
            sid = open_as(stub, metadata)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.2)
    stub.CloseSession(session_pb2.CloseSessionRequest(session_id=sid), metadata=metadata)


def test_the_client_library_sends_its_token_on_calls_and_streams(
    cluster: LocalCluster, tokens: Tokens
) -> None:
    from actionmesh_client.client_errors import ActionMeshClientError
    from actionmesh_client.session_client import ActionMeshClient

    with ActionMeshClient([cluster.address], token=tokens.by_identity["alice"]) as client:
        session = client.open_session()
        assert session.step(torch.zeros(DIM)).seq == 1
        with session.stream() as stream:
            assert stream.step(torch.zeros(DIM)).seq == 2
        session.close()
    with (
        ActionMeshClient([cluster.address]) as anonymous,
        pytest.raises(ActionMeshClientError) as caught,
    ):
        anonymous.open_session()
    assert caught.value.code == "UNAUTHENTICATED"
