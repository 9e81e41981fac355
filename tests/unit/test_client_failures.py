"""The client library's pure parts: which failures move it to the next coordinator, the typed
errors status codes map to, and how it takes a stored reply (no server: a fake call)."""

from __future__ import annotations

import torch

from service.client import (
    ActionMeshClientError,
    ActionSpec,
    InvalidObservation,
    SeqConflict,
    Session,
    SessionNotFound,
    StepShed,
)
from service.client.client_errors import RetryableFailure, failure
from service.client.session_client import should_move_on
from service.proto import session_pb2, tensor_codec


def test_only_statuses_without_a_coordinator_reason_count_as_unreachable() -> None:
    refused = "failed to connect to all addresses; last error: Connection refused"
    transport = failure("UNAVAILABLE", refused, reason="")
    assert isinstance(transport, RetryableFailure) and transport.unreachable
    served = failure("UNAVAILABLE", "stage 1: no replica left to try", reason="unavailable")
    assert isinstance(served, RetryableFailure) and not served.unreachable
    late = failure("DEADLINE_EXCEEDED", "Deadline Exceeded", reason="")
    assert isinstance(late, RetryableFailure) and not late.unreachable
    assert should_move_on(True, 1) and should_move_on(False, 2) and not should_move_on(False, 1)


def test_status_codes_map_to_typed_errors() -> None:
    assert isinstance(failure("INVALID_ARGUMENT", "NaN", "invalid_input"), InvalidObservation)
    assert isinstance(failure("NOT_FOUND", "gone", "session_not_found"), SessionNotFound)
    conflict = failure("FAILED_PRECONDITION", "session=s is at seq 4", "seq_conflict", 4)
    assert isinstance(conflict, SeqConflict) and conflict.current_seq == 4
    shed = failure("RESOURCE_EXHAUSTED", "shed (queue_full)", "shed", retry_after_s=0.25)
    assert isinstance(shed, StepShed) and shed.retry_after_s == 0.25
    other = failure("FAILED_PRECONDITION", "a kind this client does not know", "new_kind", 4)
    assert type(other) is ActionMeshClientError and other.code == "FAILED_PRECONDITION"
    assert str(other) == "a kind this client does not know"


def test_a_stored_reply_to_an_earlier_observation_is_acknowledged_and_the_step_resent() -> None:
    """The commit of seq 5 went through but the client gave up on it; the next step() sends
    seq 5 again with a new observation and gets seq 5's stored reply (earlier timestamp): it
    must take that as seq 5's acknowledgement and send the new observation as seq 6."""
    session = Session(None, "s", 4, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]
    sent: list[tuple[int, float]] = []

    def call(request: session_pb2.StepRequest) -> session_pb2.StepReply:
        sent.append((request.seq, request.timestamp_s))
        stamp = 1.0 if request.seq == 5 else request.timestamp_s  # seq 5 holds the old one
        return session_pb2.StepReply(
            seq=request.seq,
            action=tensor_codec.encode(torch.zeros(2, 7)),
            serve_mode=session_pb2.FULL,
            observation_timestamp_s=stamp,
        )

    result = session._step_with(call, torch.zeros(3), "NORMAL", timestamp_s=2.0)
    assert [seq for seq, _ in sent] == [5, 6]
    assert result.seq == 6 and session.seq == 6


def test_a_step_result_says_when_history_was_replayed_or_lost() -> None:
    session = Session(None, "s", 0, ActionSpec(3, 2, 7), "m-1")  # type: ignore[arg-type]

    def call(request: session_pb2.StepRequest) -> session_pb2.StepReply:
        return session_pb2.StepReply(
            seq=request.seq,
            action=tensor_codec.encode(torch.zeros(2, 7)),
            serve_mode=session_pb2.FULL,
            observation_timestamp_s=request.timestamp_s,
            replayed_steps=12,
            state_reset=True,
        )

    result = session._step_with(call, torch.zeros(3), "NORMAL", timestamp_s=1.0)
    assert (result.replayed_steps, result.state_reset) == (12, True)
