"""The client library's pure parts: which failures move it to the next coordinator, the typed
errors status codes and rich statuses map to, and how it takes a stored reply (no server: a fake call)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.rpc import status_pb2

from actionmesh_client.client_errors import (
    DETAILS_KEY,
    ErrorDetails,
    RetryableFailure,
    details_of,
    failure,
)
from actionmesh_client.session_client import should_move_on
from service.client import (
    ActionMeshClientError,
    ActionSpec,
    InvalidObservation,
    Priority,
    SeqConflict,
    ServeMode,
    Session,
    SessionNotFound,
    StepShed,
)
from service.coordinator import error_status, step_errors
from service.proto import session_pb2, tensor_codec, tensor_pb2


def test_unreachable_or_draining_coordinators_are_left_at_once_others_after_failures() -> None:
    refused = "failed to connect to all addresses; last error: Connection refused"
    transport = failure("UNAVAILABLE", refused, ErrorDetails())
    assert isinstance(transport, RetryableFailure) and transport.unreachable
    draining = failure("UNAVAILABLE", "draining", ErrorDetails("draining"))
    assert isinstance(draining, RetryableFailure) and draining.unreachable
    # it cannot reach the session store in time: another coordinator may
    no_store = failure("UNAVAILABLE", "store unavailable", ErrorDetails("store_unavailable"))
    assert isinstance(no_store, RetryableFailure) and no_store.unreachable
    served = failure("UNAVAILABLE", "stage 1: no replica left", ErrorDetails("unavailable"))
    assert isinstance(served, RetryableFailure) and not served.unreachable
    late = failure("DEADLINE_EXCEEDED", "Deadline Exceeded", ErrorDetails())
    assert isinstance(late, RetryableFailure) and not late.unreachable
    assert should_move_on(True, 1) and should_move_on(False, 2) and not should_move_on(False, 1)


def test_status_codes_map_to_typed_errors() -> None:
    invalid = failure("INVALID_ARGUMENT", "NaN", ErrorDetails("invalid_input", fields=("x",)))
    assert isinstance(invalid, InvalidObservation) and invalid.fields == ("x",)
    gone = failure("NOT_FOUND", "gone", ErrorDetails("session_not_found"))
    assert isinstance(gone, SessionNotFound)
    conflict = failure("FAILED_PRECONDITION", "at seq 4", ErrorDetails("seq_conflict", 4))
    assert isinstance(conflict, SeqConflict) and conflict.current_seq == 4
    shed = failure("RESOURCE_EXHAUSTED", "shed", ErrorDetails("shed", retry_after_s=0.25))
    assert isinstance(shed, StepShed) and shed.retry_after_s == 0.25
    other = failure("FAILED_PRECONDITION", "a kind this client does not know", ErrorDetails("x"))
    assert type(other) is ActionMeshClientError and other.code == "FAILED_PRECONDITION"
    assert str(other) == "a kind this client does not know"


@pytest.mark.parametrize(
    ("error", "want"),
    [
        (step_errors.SeqConflict("s" * 24, 4, 9), ErrorDetails("seq_conflict", current_seq=4)),
        (step_errors.Overloaded("queue full", 0.25), ErrorDetails("shed", retry_after_s=0.25)),
        (
            step_errors.InvalidInput("observation has NaN", "observation"),
            ErrorDetails("invalid_input", fields=("observation",)),
        ),
        (step_errors.InvalidInput("bad"), ErrorDetails("invalid_input")),
        (step_errors.SessionNotFound("gone"), ErrorDetails("session_not_found")),
        (step_errors.Draining("go elsewhere"), ErrorDetails("draining")),
        (step_errors.StoreUnreachable("no store"), ErrorDetails("store_unavailable")),
    ],
)
def test_the_client_reads_back_what_the_coordinators_rich_status_says(
    error: step_errors.ActionmeshError, want: ErrorDetails
) -> None:
    """The rich status the coordinator builds (google.rpc.Status) parses to the same reason,
    seq, retry hint and fields, and its code and reason are the older trailers' ones."""
    status = error_status.rich_status(error, str(error))
    assert status.code == error_status.status_of(error).value[0] and status.message == str(error)
    assert details_of(status) == want
    trailers = dict(error_status.trailing_metadata(error, str(error)))
    assert trailers[error_status.ERROR_KEY] == want.reason
    assert details_of(status_pb2.Status.FromString(trailers[DETAILS_KEY])) == want  # type: ignore[arg-type]


def reply_to(request: session_pb2.StepRequest, **fields: object) -> session_pb2.StepReply:
    """What a coordinator answers: the request's observation_id and tick echoed."""
    defaults: dict[str, object] = {
        "seq": request.seq,
        "action": tensor_codec.encode(torch.zeros(2, 7)),
        "serve_mode": session_pb2.SERVE_MODE_FULL,
        "observation_timestamp_s": request.timestamp_s,
        "observation_id": request.observation_id,
        "first_action_tick": request.tick,
    }
    return session_pb2.StepReply(**{**defaults, **fields})  # type: ignore[arg-type]


def test_a_stored_reply_to_an_earlier_observation_is_acknowledged_and_the_step_resent() -> None:
    """The commit of seq 5 went through but the client gave up on it; the next step() sends
    seq 5 again with a new observation and gets seq 5's stored reply (another observation_id):
    it must take that as seq 5's acknowledgement and send the new observation as seq 6. The
    robot's clock is frozen (a paused sim): timestamps cannot tell the observations apart."""
    session = Session(None, "s", 4, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    sent: list[tuple[int, int]] = []

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        sent.append((request.seq, request.observation_id))
        if request.seq == 5:  # seq 5 holds the earlier observation's reply
            return reply_to(request, observation_id=41)
        return reply_to(request)

    result = session._step_with(call, torch.zeros(3), "NORMAL", 2.0, 42, 7, None)
    assert sent == [(5, 42), (6, 42)]
    assert result.seq == 6 and session.seq == 6 and result.observation_id == 42
    assert result.first_action_tick == 7


def test_a_retried_step_is_matched_by_its_observation_id_not_its_timestamp() -> None:
    """A stored reply of this same observation (its attempt was committed, the answer lost):
    taken as this step's answer even though the clock, frozen, gives every step one stamp."""
    session = Session(None, "s", 4, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    sent: list[int] = []

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        sent.append(request.seq)
        return reply_to(request)

    result = session._step_with(call, torch.zeros(3), "NORMAL", 2.0, None, 0, None)
    assert sent == [5] and result.seq == 5 and result.observation_id != 0


def test_a_coordinator_that_echoes_no_observation_id_is_matched_by_timestamp() -> None:
    session = Session(None, "s", 4, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    sent: list[int] = []

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        sent.append(request.seq)
        stamp = 1.0 if request.seq == 5 else request.timestamp_s
        return reply_to(request, observation_id=0, observation_timestamp_s=stamp)

    result = session._step_with(call, torch.zeros(3), "NORMAL", 2.0, None, 0, None)
    assert sent == [5, 6] and result.seq == 6


def test_a_step_budget_is_sent_and_bounds_every_attempt() -> None:
    session = Session(None, "s", 0, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    seen: list[tuple[float, float | None]] = []

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        seen.append((request.budget_ms, deadline))
        return reply_to(request)

    session._step_with(call, np.zeros(3), "NORMAL", 1.0, None, 0, 0.25)
    ((budget_ms, deadline),) = seen
    assert 0 < budget_ms <= 250 and deadline is not None
    with pytest.raises(ValueError, match="budget_s"):
        session._step_with(call, np.zeros(3), "NORMAL", 1.0, None, 0, 0.0)


def test_a_step_result_says_when_history_was_replayed_or_lost() -> None:
    session = Session(None, "s", 0, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        return reply_to(request, replayed_steps=12, state_reset=True)

    result = session._step_with(call, torch.zeros(3), "NORMAL", 1.0, None, 0, None)
    assert (result.replayed_steps, result.state_reset) == (12, True)
    assert result.serve_mode is ServeMode.FULL and result.serve_mode == "FULL"
    assert isinstance(result.action, np.ndarray) and result.action.dtype == np.float32


def test_observations_are_sent_as_float32_and_priorities_are_checked() -> None:
    session = Session(None, "s", 0, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    got: list[session_pb2.StepRequest] = []

    def call(request: session_pb2.StepRequest, deadline: float | None) -> session_pb2.StepReply:
        got.append(request)
        return reply_to(request)

    session._step_with(call, [0.5, 1.0, 2.0], Priority.SAFETY, 1.0, None, 0, None)
    assert got[0].observation.dtype == tensor_pb2.DTYPE_FLOAT32
    assert got[0].priority == session_pb2.PRIORITY_SAFETY
    with pytest.raises(ValueError, match="URGENT"):
        session._step_with(call, np.zeros(3), "URGENT", 1.0, None, 0, None)
