"""How a session is laid out in Redis: its keys, its hash's fields, its observation log's
entries, and the arguments and replies of the Lua scripts (redis_scripts.py) that write them.
Kept apart from redis_store.py, which calls Redis, so the layout reads in one place.

Key layout (the braces are a Redis Cluster hash tag, so every key of a session shares a slot):
- `am:{<session_id>}:session`, a hash: `seq`, `model_version`, `ttl_s`, `client_id`, `owner`,
  `reply`;
  per stage k `stage:<k>` (opaque bytes) and `stage:<k>:seq`; while some stage lags,
  `anchor_seq` and `anchor:<k>` (every stage's state at the last level step); while the
  distilled student answers, `student` and `student_seq`; while the session moves to another
  model version, `switch` (the new version's states so far, `SwitchProgress.encode`); once a
  desired version moved it, `version_revision` (the etcd revision that version was seen at).
- `am:{<session_id>}:obslog`, a list of the last observations, each 8 bytes of big-endian seq
  followed by the observation's bytes.
- `am:{owner:<identity>}:sessions`, a set: the ids of the sessions an identity opened (auth
  on), for its open-session limit; ids whose session is gone are pruned when the set is full.
"""

from __future__ import annotations

import logging
import struct

from state.session import (
    Anchor,
    CommitOutcome,
    CommitStatus,
    SessionId,
    SessionRecord,
    StageIndex,
    StageState,
    StepCommit,
    SwitchProgress,
)

_log = logging.getLogger(__name__)

# An observation log entry: its seq in this many bytes, big-endian, then the observation.
SEQ_BYTES = 8


def session_key(session_id: SessionId) -> str:
    return f"am:{{{session_id}}}:session"


def log_key(session_id: SessionId) -> str:
    return f"am:{{{session_id}}}:obslog"


def owner_key(owner: str) -> str:
    return f"am:{{owner:{owner}}}:sessions"


def ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    return max(1, round(ttl_s * 1000))


def _stage_fields(stage_states: dict[StageIndex, StageState]) -> list[int | str | bytes]:
    fields: list[int | str | bytes] = []
    for k, stage in sorted(stage_states.items()):
        fields += [f"stage:{k}", stage.data, f"stage:{k}:seq", stage.seq]
    return fields


def record_fields(record: SessionRecord) -> list[int | str | bytes]:
    fields: list[int | str | bytes] = [
        "seq",
        record.seq,
        "model_version",
        record.model_version,
        "ttl_s",
        str(record.ttl_s),
        "client_id",
        record.client_id,
        "reply",
        record.last_reply,
        "wait_replicas",
        record.wait_replicas,
        "version_revision",
        record.version_revision,
        "owner",
        record.owner,
    ]
    return fields + _stage_fields(record.stage_states)


def commit_args(step: StepCommit) -> list[int | str | bytes]:
    """ARGV of COMMIT_LUA."""
    entry = step.new_seq.to_bytes(SEQ_BYTES, "big") + step.observation if step.observation else b""
    args: list[int | str | bytes] = [
        step.expected_seq,
        step.new_seq,
        ttl_ms(step.ttl_s),
        step.n_stages,
        step.log_limit,
        entry,
        step.last_reply,
        step.model_version,
        step.student.data if step.student else b"",
        step.student.seq if step.student else 0,
        step.anchor.seq if step.anchor else 0,
    ]
    anchored = sorted(step.anchor.states.items()) if step.anchor else []
    args += [len(anchored), step.switch.encode() if step.switch else b"", step.version_revision]
    for k, data in anchored:
        args += [k, data]
    for k, state in sorted(step.stage_states.items()):
        args += [k, state.data, state.seq]
    return args


def parse_record(session_id: SessionId, fields: dict[bytes, bytes]) -> SessionRecord:
    data: dict[StageIndex, bytes] = {}
    seqs: dict[StageIndex, int] = {}
    anchored: dict[StageIndex, bytes] = {}
    for name, value in fields.items():
        parts = name.split(b":")
        if parts[0] == b"stage":
            k = StageIndex(int(parts[1]))
            if len(parts) == 3:
                seqs[k] = int(value)
            else:
                data[k] = value
        elif parts[0] == b"anchor":
            anchored[StageIndex(int(parts[1]))] = value
    anchor_seq = fields.get(b"anchor_seq")
    student = fields.get(b"student")
    switch = fields.get(b"switch")
    return SessionRecord(
        session_id=session_id,
        seq=int(fields[b"seq"]),
        model_version=fields[b"model_version"].decode(),
        version_revision=int(fields.get(b"version_revision", b"0")),
        ttl_s=float(fields[b"ttl_s"]),
        client_id=fields[b"client_id"].decode(),
        stage_states={k: StageState(seq=seqs[k], data=data[k]) for k in sorted(data)},
        last_reply=fields[b"reply"],
        anchor=Anchor(int(anchor_seq), anchored) if anchor_seq is not None else None,
        student=StageState(int(fields[b"student_seq"]), student) if student else None,
        wait_replicas=int(fields.get(b"wait_replicas", b"0")),  # absent in older sessions
        switch=_switch_progress(session_id, switch),
        owner=fields.get(b"owner", b"").decode(),  # absent in sessions opened before owners
    )


def parse_outcome(reply: list[bytes]) -> CommitOutcome:
    status = CommitStatus(reply[0].decode())
    return CommitOutcome(status=status, current_seq=int(reply[1]) if len(reply) > 1 else None)


def _switch_progress(session_id: SessionId, blob: bytes | None) -> SwitchProgress | None:
    """A stored switch's progress; an unreadable one is dropped (the switch starts over)."""
    if not blob:
        return None
    try:
        return SwitchProgress.decode(blob)
    except (struct.error, UnicodeDecodeError) as exc:
        # the log formatter shortens the session id: it is a credential
        _log.warning(
            "unreadable version-switch progress dropped: %s", exc, extra={"session": session_id}
        )
        return None
