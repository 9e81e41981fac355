"""SessionStore on Redis: one hash and one list per session, written by Lua so each is atomic.

Key layout (the braces are a Redis Cluster hash tag, so every key of a session shares a slot):
- `am:{<session_id>}:session`, a hash: `seq`, `model_version`, `ttl_s`, `client_id`, `reply`;
  per stage k `stage:<k>` (opaque bytes) and `stage:<k>:seq`; while some stage lags,
  `anchor_seq` and `anchor:<k>` (every stage's state at the last level step).
- `am:{<session_id>}:obslog`, a list of the last observations, each 8 bytes of big-endian seq
  followed by the observation's bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import TypeVar, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from state.metrics import REDIS_COMMIT_SECONDS, STATE_RETRIES
from state.session import (
    Anchor,
    CommitOutcome,
    CommitStatus,
    SessionId,
    SessionRecord,
    StageIndex,
    StageState,
    StepCommit,
)
from state.store import StoreUnavailable

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Only errors where the command may not have reached Redis are retried; anything else is a bug.
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
RETRY_ATTEMPTS = 3
RETRY_FIRST_WAIT_S = 0.05  # doubles per retry, plus up to this much jitter
RETRY_MAX_WAIT_S = 0.5

# KEYS[1] session hash; ARGV[1] ttl in ms; ARGV[2..] field/value pairs.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] session hash, KEYS[2] observation log; ARGV[1] expected seq, ARGV[2] new seq,
# ARGV[3] ttl in ms, ARGV[4] number of stages, ARGV[5] log limit, ARGV[6] log entry (may be
# empty), ARGV[7] reply, ARGV[8..] stage index / state / seq triples.
# Replies {status, seq}; a replayed commit sees its own seq: CONFLICT.
_COMMIT_LUA = """
local current = redis.call('HGET', KEYS[1], 'seq')
if not current then
  return {'gone'}
end
if tonumber(current) ~= tonumber(ARGV[1]) then
  return {'conflict', current}
end
local n_stages = tonumber(ARGV[4])
local stage_seq = function(k)
  return tonumber(redis.call('HGET', KEYS[1], 'stage:' .. k .. ':seq') or '0')
end
local was_level = true
for k = 0, n_stages - 1 do
  if stage_seq(k) ~= tonumber(ARGV[1]) then was_level = false end
end
local advanced = {}
for i = 8, #ARGV, 3 do advanced[tonumber(ARGV[i])] = true end
local level_after = true
for k = 0, n_stages - 1 do
  if not advanced[k] then level_after = false end
end
if was_level and not level_after then
  redis.call('HSET', KEYS[1], 'anchor_seq', ARGV[1])
  for k = 0, n_stages - 1 do
    local state = redis.call('HGET', KEYS[1], 'stage:' .. k)
    if state then redis.call('HSET', KEYS[1], 'anchor:' .. k, state) end
  end
elseif level_after and redis.call('HEXISTS', KEYS[1], 'anchor_seq') == 1 then
  redis.call('HDEL', KEYS[1], 'anchor_seq')
  for k = 0, n_stages - 1 do redis.call('HDEL', KEYS[1], 'anchor:' .. k) end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'reply', ARGV[7])
for i = 8, #ARGV, 3 do
  redis.call('HSET', KEYS[1], 'stage:' .. ARGV[i], ARGV[i + 1], 'stage:' .. ARGV[i] .. ':seq', ARGV[i + 2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(ARGV[5])
if limit > 0 and #ARGV[6] > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('LTRIM', KEYS[2], -limit, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {'committed', ARGV[2]}
"""

_SEQ_BYTES = 8


class RedisSessionStore:
    """Sessions in Redis; retries only idempotent or conditional calls, then StoreUnavailable."""

    def __init__(self, url: str, *, socket_timeout_s: float) -> None:
        self._url = _redacted(url)
        # redis-py's own retries are off: tenacity below is the one bounded, counted policy.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),
        )
        self._create_script = self._client.register_script(_CREATE_LUA)
        self._commit_script = self._client.register_script(_COMMIT_LUA)

    def create(self, record: SessionRecord) -> None:
        key = _session_key(record.session_id)
        args = [_ttl_ms(record.ttl_s), *_record_fields(record)]
        # Not retried: a create that went through would come back as "already exists".
        created = self._call("create", lambda: self._create_script([key], args), retry=False)
        if not created:
            raise ValueError(f"session={record.session_id} already exists")

    def load(self, session_id: SessionId) -> SessionRecord | None:
        key = _session_key(session_id)
        fields = self._call("load", lambda: self._client.hgetall(key))
        return _parse_record(session_id, cast("dict[bytes, bytes]", fields)) if fields else None

    def commit(self, session_id: SessionId, step: StepCommit) -> CommitOutcome:
        if step.new_seq <= step.expected_seq:  # an equal seq would make a replayed commit look new
            raise ValueError(
                f"session={session_id} new_seq {step.new_seq} <= expected {step.expected_seq}"
            )
        keys = [_session_key(session_id), _log_key(session_id)]
        entry = (
            step.new_seq.to_bytes(_SEQ_BYTES, "big") + step.observation if step.observation else b""
        )
        args: list[int | str | bytes] = [
            step.expected_seq,
            step.new_seq,
            _ttl_ms(step.ttl_s),
            step.n_stages,
            step.log_limit,
            entry,
            step.last_reply,
        ]
        for k, state in sorted(step.stage_states.items()):
            args += [k, state.data, state.seq]
        with REDIS_COMMIT_SECONDS.time():
            reply = self._call("commit", lambda: self._commit_script(keys, args))
        outcome = _parse_outcome(cast("list[bytes]", reply))
        if outcome.status is not CommitStatus.COMMITTED:
            _log.info(
                "session=%s commit %s: expected_seq=%d current_seq=%s",
                session_id,
                outcome.status.value,
                step.expected_seq,
                outcome.current_seq,
            )
        return outcome

    def observations(
        self, session_id: SessionId, first_seq: int, last_seq: int
    ) -> list[bytes] | None:
        key = _log_key(session_id)
        entries = cast(
            "list[bytes]", self._call("observations", lambda: self._client.lrange(key, 0, -1))
        )
        by_seq = {int.from_bytes(e[:_SEQ_BYTES], "big"): e[_SEQ_BYTES:] for e in entries}
        wanted = range(first_seq, last_seq + 1)
        if any(seq not in by_seq for seq in wanted):
            return None
        return [by_seq[seq] for seq in wanted]

    def log_depth(self, session_id: SessionId) -> int:
        key = _log_key(session_id)
        return int(self._call("log_depth", lambda: self._client.llen(key)))

    def ttl_left_s(self, session_id: SessionId) -> float | None:
        key = _session_key(session_id)
        ms = self._call("ttl_left_s", lambda: self._client.pttl(key))
        if ms == -2:  # no such key
            return None
        return math.inf if ms == -1 else ms / 1000.0  # -1: a key without expiry (set by hand)

    def delete(self, session_id: SessionId) -> bool:
        keys = [_session_key(session_id), _log_key(session_id)]
        return self._call("delete", lambda: self._client.unlink(*keys), retry=False) > 0

    def ping(self) -> bool:
        """False, not an exception, when Redis does not answer: this is a health probe."""
        try:
            return self._call("ping", self._client.ping)
        except StoreUnavailable as exc:
            _log.warning("%s", exc)
            return False

    def close(self) -> None:
        self._client.close()

    def _call(self, operation: str, fn: Callable[[], _T], *, retry: bool = True) -> _T:
        attempts = RETRY_ATTEMPTS if retry else 1
        retrying = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(
                multiplier=RETRY_FIRST_WAIT_S, max=RETRY_MAX_WAIT_S, jitter=RETRY_FIRST_WAIT_S
            ),
            before_sleep=partial(self._count_retry, operation),
            reraise=True,
        )
        try:
            return retrying(fn)
        except _TRANSIENT as exc:
            raise StoreUnavailable(
                f"store={self._url} operation={operation}: no answer after {attempts} attempt(s)"
                f" ({exc}); check the Redis URL and that the server is up"
            ) from exc

    def _count_retry(self, operation: str, state: RetryCallState) -> None:
        STATE_RETRIES.labels(operation=operation).inc()
        error = state.outcome.exception() if state.outcome else None
        _log.warning(
            "store=%s operation=%s attempt=%d failed, retrying: %s",
            self._url,
            operation,
            state.attempt_number,
            error,
        )


def _session_key(session_id: SessionId) -> str:
    return f"am:{{{session_id}}}:session"


def _log_key(session_id: SessionId) -> str:
    return f"am:{{{session_id}}}:obslog"


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    return max(1, round(ttl_s * 1000))


def _stage_fields(stage_states: dict[StageIndex, StageState]) -> list[int | str | bytes]:
    fields: list[int | str | bytes] = []
    for k, stage in sorted(stage_states.items()):
        fields += [f"stage:{k}", stage.data, f"stage:{k}:seq", stage.seq]
    return fields


def _record_fields(record: SessionRecord) -> list[int | str | bytes]:
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
    ]
    return fields + _stage_fields(record.stage_states)


def _parse_record(session_id: SessionId, fields: dict[bytes, bytes]) -> SessionRecord:
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
    return SessionRecord(
        session_id=session_id,
        seq=int(fields[b"seq"]),
        model_version=fields[b"model_version"].decode(),
        ttl_s=float(fields[b"ttl_s"]),
        client_id=fields[b"client_id"].decode(),
        stage_states={k: StageState(seq=seqs[k], data=data[k]) for k in sorted(data)},
        last_reply=fields[b"reply"],
        anchor=Anchor(int(anchor_seq), anchored) if anchor_seq is not None else None,
    )


def _parse_outcome(reply: list[bytes]) -> CommitOutcome:
    status = CommitStatus(reply[0].decode())
    return CommitOutcome(status=status, current_seq=int(reply[1]) if len(reply) > 1 else None)


def _redacted(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
