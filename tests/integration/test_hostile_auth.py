"""Hostile input with the doors locked: generated calls over the public protos against a live
coordinator with auth = token, over plaintext and over TLS (--tls: the robot presents a client
certificate, Redis wants AUTH), as nobody, as a stranger with a made-up or malformed token, as
an identity without the step scope, as another robot, as the owner and as an admin; and
Drain, which only the admin may call (here always with a bad grace: never answered).

Each call's status must be the right one for who made it: UNAUTHENTICATED for no or a wrong
token, PERMISSION_DENIED for a checkpoint-only identity and for another identity's session
(never that session's data); never UNKNOWN or INTERNAL, never past the deadline; and at the
end no session is left behind that nobody was told of and the victim session is untouched.

CI runs ACTIONMESH_FUZZ_CASES cases (default 300); the full run is
`ACTIONMESH_FUZZ_CASES=10000 pytest tests/integration/test_hostile_auth.py -s` (it prints the
statuses seen)."""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec, tensor_pb2
from state.redis_url import read_secret
from tests.conftest import SMALL_MODEL, cluster_settings
from tests.support.locked_cluster import Metadata, Tokens, make_identities, stored_sessions

FUZZ_CASES = int(os.environ.get("ACTIONMESH_FUZZ_CASES", "300"))
pytestmark = pytest.mark.timeout(600 + FUZZ_CASES // 4)

DEADLINE_S = 2.0
SLACK_S = 1.5  # a loaded 2-core machine; a stuck call would take far longer
DIM = SMALL_MODEL.observation_dim
CASES = settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLEAN = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
SESSION_METHODS = ("Step", "GetSession", "CloseSession", "StreamSteps")  # name a session
METHODS = ["OpenSession", *SESSION_METHODS, "Drain", "raw"]
UNKNOWN_CALLERS = ["nobody", "made-up token", "malformed header"]
CALLERS = [*UNKNOWN_CALLERS, "ci", "alice", "bob", "ops"]


@dataclass
class Tally:
    """What the run saw, printed at the end (the report's figures)."""

    cases: int = 0
    calls: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    told: set[str] = field(default_factory=set)  # every session id the coordinator gave out


@pytest.fixture(scope="module", params=["plaintext", "tls"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tally(transport: str) -> Tally:
    return Tally()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_identities(tmp_path_factory.mktemp("secrets"))


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, tokens: Tokens, transport: str
) -> Iterator[LocalCluster]:
    overrides = {"auth": "token", "identities_file": tokens.path, "identity_steps_per_s": 0}
    with LocalCluster(
        cluster_settings(tmp_path_factory.mktemp("hostile-auth"), tls=transport == "tls"),
        model=SMALL_MODEL,
        coordinator_overrides=overrides,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(cluster: LocalCluster) -> Iterator[grpc.Channel]:
    with cluster.channel("robot-a") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(channel)


@dataclass(frozen=True)
class Victim:
    """Alice's session, stepped once: the one everybody else tries to reach."""

    session_id: str
    reply: bytes
    sessions_before: frozenset[str]


@pytest.fixture(scope="module")
def victim(
    cluster: LocalCluster, stub: session_pb2_grpc.SessionServiceStub, tokens: Tokens, tally: Tally
) -> Victim:
    before = frozenset(sessions_now(cluster))
    alice = tokens.metadata("alice")
    # Nobody steps it during the run (GetSession does not refresh a TTL): it must outlive it.
    request = session_pb2.OpenSessionRequest(ttl_s=3600)
    opened = stub.OpenSession(request, metadata=alice, timeout=10)
    tally.told.add(opened.session_id)
    reply = stub.Step(good_step(opened.session_id, 1), metadata=alice, timeout=10)
    return Victim(opened.session_id, reply.SerializeToString(), before)


def good_step(session_id: str, seq: int) -> session_pb2.StepRequest:
    return session_pb2.StepRequest(
        session_id=session_id, seq=seq, observation=tensor_codec.encode(torch.zeros(DIM))
    )


def credentials(who: str, tokens: Tokens, header: str, made_up: str) -> Metadata:
    if who == "nobody":
        return ()
    if who == "made-up token":
        return (("authorization", f"Bearer {made_up}"),)
    if who == "malformed header":
        return (("authorization", header),)
    return tokens.metadata(who)


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
observations = st.one_of(
    st.just(None),  # a valid observation (the case knows it is valid)
    st.lists(floats, min_size=DIM, max_size=DIM).map(
        lambda v: tensor_codec.encode(torch.tensor(v, dtype=torch.float32))
    ),
    st.builds(
        tensor_pb2.Tensor,
        dtype=st.integers(0, 12),
        shape=st.lists(st.integers(-5, 2**40), max_size=6),
        data=st.binary(max_size=128),
    ),
)
# What a confused or hostile client puts in the header (printable ASCII: gRPC's rule).
headers = st.one_of(
    st.from_regex(r"[!-~][ -~]{0,80}[!-~]", fullmatch=True),
    st.from_regex(r"(Bearer|bearer|BEARER|Basic|Token) [!-~]{0,80}", fullmatch=True),
)


@dataclass(frozen=True)
class Case:
    who: str
    method: str
    target: str  # victim | own | made-up
    made_up_id: str
    seq: int
    observation: tensor_pb2.Tensor | None
    priority: int
    ttl_s: float
    client_id: str
    raw: bytes
    stream_length: int
    header: str  # the authorization header of a "malformed header" caller


cases = st.builds(
    Case,
    who=st.sampled_from(CALLERS),
    method=st.sampled_from(METHODS),
    target=st.sampled_from(["victim", "own", "made-up"]),
    made_up_id=st.text(max_size=200),
    seq=st.integers(0, 2**64 - 1),
    observation=observations,
    priority=st.integers(0, 2**31 - 1),
    ttl_s=st.floats(allow_nan=True, allow_infinity=True),
    client_id=st.text(max_size=200),
    raw=st.binary(min_size=1, max_size=256),
    stream_length=st.integers(1, 3),
    header=headers,
)


class Caller:
    """One case's calls, each timed and its status checked against who made it."""

    def __init__(self, case: Case, metadata: Metadata, tally: Tally) -> None:
        self.case, self.metadata, self.tally = case, metadata, tally

    def expect(self) -> set[grpc.StatusCode] | None:
        """The only statuses this caller may get for anything; None: any clean one."""
        if self.case.who in UNKNOWN_CALLERS:
            return {grpc.StatusCode.UNAUTHENTICATED}
        if self.case.who == "ci":
            return {grpc.StatusCode.PERMISSION_DENIED}
        return None

    def call(self, what: str, fn: object, request: object, allowed: set[grpc.StatusCode]) -> object:
        """The reply, or None after a status in `allowed` (else the case fails)."""
        started = time.monotonic()
        self.tally.calls += 1
        try:
            reply = fn(request, metadata=self.metadata, timeout=DEADLINE_S)  # type: ignore[operator]
            self.tally.statuses["OK"] += 1
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            self.tally.statuses[code.name] += 1
            details = exc.details() or ""  # type: ignore[attr-defined]
            assert code in allowed, f"{self.case.who} {what}: {code.name} {details[:300]}"
            reply = None
        elapsed = time.monotonic() - started
        assert elapsed < DEADLINE_S + SLACK_S, f"{self.case.who} {what}: {elapsed:.1f} s"
        assert self.expect() is None or reply is None, f"{self.case.who} {what} was answered"
        return reply


@given(case=cases)
@CASES
def test_locked_doors_hold_against_generated_calls(
    stub: session_pb2_grpc.SessionServiceStub,
    channel: grpc.Channel,
    tokens: Tokens,
    victim: Victim,
    tally: Tally,
    case: Case,
) -> None:
    tally.cases += 1
    # gRPC carries printable ASCII in a header: anything else the client refuses to send.
    metadata = credentials(case.who, tokens, case.header, _printable(case.made_up_id))
    caller = Caller(case, metadata, tally)
    forced = caller.expect()
    allowed = forced if forced is not None else CLEAN
    # The victim's owner and the admin never step or close it here: the victim must stay as
    # it was, so that any change is someone else's doing.
    owner_like = case.who in ("alice", "ops")
    target = case.target
    if target == "victim" and owner_like and case.method not in ("GetSession", "raw"):
        target = "made-up"
    own = ""
    if target == "own" and forced is None:
        opened = stub.OpenSession(session_pb2.OpenSessionRequest(), metadata=metadata, timeout=10)
        own = opened.session_id
        tally.told.add(own)
    session_id = {"victim": victim.session_id, "own": own, "made-up": case.made_up_id}[target]
    # The stranger on the victim's session: denied, or refused for bad input checked first.
    on_victim = target == "victim" and case.who == "bob" and case.method in SESSION_METHODS
    if on_victim and forced is None:
        allowed = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
        if case.observation is None or case.method in ("GetSession", "CloseSession"):
            allowed = {grpc.StatusCode.PERMISSION_DENIED}
    observation = case.observation or tensor_codec.encode(torch.zeros(DIM))
    step = session_pb2.StepRequest(
        session_id=session_id,
        seq=case.seq if case.observation is not None else (1 if target == "own" else case.seq),
        observation=observation,
        priority=case.priority if case.observation is not None else 0,  # type: ignore[arg-type]
    )
    try:
        if case.method == "OpenSession":
            request = session_pb2.OpenSessionRequest(ttl_s=case.ttl_s, client_id=case.client_id)
            opened = caller.call("OpenSession", stub.OpenSession, request, allowed)
            if isinstance(opened, session_pb2.OpenSessionReply):
                tally.told.add(opened.session_id)
                close(stub, opened.session_id, metadata)
        elif case.method == "Step":
            reply = caller.call("Step", stub.Step, step, allowed)
            assert not (on_victim and reply is not None), "the stranger got the victim's reply"
        elif case.method == "GetSession":
            request = session_pb2.GetSessionRequest(session_id=session_id)
            info = caller.call("GetSession", stub.GetSession, request, allowed)
            assert not (on_victim and info is not None), "the stranger read the victim"
        elif case.method == "CloseSession":
            request = session_pb2.CloseSessionRequest(session_id=session_id)
            caller.call("CloseSession", stub.CloseSession, request, allowed)
        elif case.method == "StreamSteps":
            stream_case(stub, caller, step, case.stream_length, allowed, on_victim)
        elif case.method == "Drain":
            # Only an admin may drain; the admin's drain here has a bad grace (a good one
            # would end the run), so nobody's drain is ever answered.
            grace_s = -1.0 - abs(case.ttl_s) if case.who == "ops" else case.ttl_s
            wanted = {"ops": grpc.StatusCode.INVALID_ARGUMENT}.get(
                case.who, grpc.StatusCode.PERMISSION_DENIED
            )
            drain = session_pb2.DrainRequest(grace_s=grace_s)
            drained = caller.call("Drain", stub.Drain, drain, forced or {wanted})
            assert drained is None, f"{case.who} drained the coordinator"
        else:
            raw = channel.unary_unary("/actionmesh.v1.SessionService/GetSession")
            info = caller.call("GetSession (raw)", raw, case.raw, allowed)
            if info is not None and case.who not in ("alice", "ops"):
                parsed = session_pb2.SessionInfo.FromString(info)  # type: ignore[arg-type]
                assert parsed.session_id != victim.session_id, "raw bytes read the victim"
    finally:
        if own:
            close(stub, own, metadata)


def stream_case(
    stub: session_pb2_grpc.SessionServiceStub,
    caller: Caller,
    step: session_pb2.StepRequest,
    length: int,
    allowed: set[grpc.StatusCode],
    on_victim: bool,
) -> None:
    """A stream of `length` copies of the step: an unknown caller's stream ends with its status
    before any item; any other's items are replies or error items with allowed codes."""
    items = caller.call(
        "StreamSteps",
        lambda r, **kw: list(stub.StreamSteps(iter(r), **kw)),
        [step] * length,
        allowed,
    )
    if items is None:
        return
    assert isinstance(items, list) and len(items) == length
    for item in items:
        if item.WhichOneof("result") == "error":
            code = next(c for c in grpc.StatusCode if c.value[0] == item.error.code)
            caller.tally.statuses[f"stream item {code.name}"] += 1
            assert code in allowed, f"{caller.case.who} stream item: {code.name}"
        else:
            caller.tally.statuses["stream item OK"] += 1
            assert not on_victim, "the stranger stepped the victim over a stream"


def close(stub: session_pb2_grpc.SessionServiceStub, session_id: str, metadata: Metadata) -> None:
    stub.CloseSession(
        session_pb2.CloseSessionRequest(session_id=session_id), metadata=metadata, timeout=10
    )


def sessions_now(cluster: LocalCluster) -> set[str]:
    password_file = cluster.redis_password_file
    password = None if password_file is None else read_secret(password_file)
    return stored_sessions(cluster.redis_url, password)


def _printable(text: str) -> str:
    kept = "".join(c for c in text if " " <= c <= "~").strip()
    return kept or "x"


def test_afterwards_the_victim_is_untouched_and_no_session_leaked(
    cluster: LocalCluster,
    stub: session_pb2_grpc.SessionServiceStub,
    tokens: Tokens,
    victim: Victim,
    tally: Tally,
    transport: str,
) -> None:
    alice = tokens.metadata("alice")
    info = stub.GetSession(
        session_pb2.GetSessionRequest(session_id=victim.session_id), metadata=alice, timeout=10
    )
    assert info.seq == 1, "someone stepped the victim"
    retry = stub.Step(good_step(victim.session_id, 1), metadata=alice, timeout=10)
    assert retry.SerializeToString() == victim.reply
    fresh = stub.OpenSession(session_pb2.OpenSessionRequest(), metadata=alice, timeout=10)
    close(stub, fresh.session_id, alice)  # not drained: it still opens sessions
    left = sessions_now(cluster) - victim.sessions_before
    assert left == {victim.session_id}, f"{len(left - {victim.session_id})} sessions leaked"
    assert left <= tally.told
    summary = {
        "cases": tally.cases,
        "calls": tally.calls,
        "statuses": dict(sorted(tally.statuses.items())),
    }
    print(f"\nhostile auth fuzz ({transport}): {json.dumps(summary)}")
    assert tally.cases >= FUZZ_CASES
    assert tally.statuses["UNAUTHENTICATED"] and tally.statuses["PERMISSION_DENIED"]
