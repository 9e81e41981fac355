"""A loaded session's stage states checked before any is sent to a shard: one that is not the
float32 [memory_tokens, d_model] finite tensor a stage keeps is treated as lost.

Sent as it is, a malformed state makes every replica of its stage refuse the step
(INVALID_ARGUMENT), for ever: the robot would get failures or degraded answers until its
session expires, with nothing it could do about it. Treated as lost, it is rebuilt like any
stage that missed steps: by replay of the observation log from the session's start while the
log reaches back (the answer is then exactly the one a never-corrupted session gets), else by
a reset that the answer flags `state_reset`. The robot keeps its session and is told the truth.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from google.protobuf.message import DecodeError

from service.model.config import ModelConfig
from service.proto import tensor_codec
from service.runtime.metrics import STORED_STATES_UNREADABLE
from state.session import Anchor, SessionRecord, StageState

log = logging.getLogger(__name__)


def readable(data: bytes, model: ModelConfig) -> bool:
    """Empty (fresh), or a stage state this model's stages can run from."""
    if not data:
        return True
    try:
        state = tensor_codec.from_bytes(data)
    except (DecodeError, tensor_codec.TensorDecodeError):
        return False
    return (
        state.dtype == torch.float32
        and list(state.shape) == [model.memory_tokens, model.d_model]
        and bool(torch.isfinite(state).all())
    )


def without_unreadable_states(record: SessionRecord, model: ModelConfig) -> SessionRecord:
    """`record` with each unreadable stage state marked lost (fresh, at seq 0), so that the
    step replays it from the log (a replay from the session's start: the anchor is reset
    too when it holds an unreadable state or there is none). The record itself when all
    states are readable."""
    lost = [k for k, s in record.stage_states.items() if not readable(s.data, model)]
    anchor = record.anchor
    bad_anchor = anchor is not None and not all(readable(d, model) for d in anchor.states.values())
    if not lost and not bad_anchor:
        return record
    for k in lost:
        STORED_STATES_UNREADABLE.labels(str(k)).inc()
    log.warning(
        "session=%s seq=%d: stored state of stages %s%s unreadable, treated as lost (rebuilt "
        "from the observation log, or reset)",
        record.session_id,
        record.seq,
        sorted(lost),
        " and of its replay anchor" if bad_anchor else "",
    )
    states = {k: StageState(0, b"") if k in lost else s for k, s in record.stage_states.items()}
    if bad_anchor or anchor is None:
        anchor = Anchor(0, {})  # every stage fresh before the first step
    return dataclasses.replace(record, stage_states=states, anchor=anchor)
