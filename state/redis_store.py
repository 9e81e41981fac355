"""SessionStore on Redis: one hash and one list per session, written by Lua so each is atomic.

Here are the store's calls and how they are retried (a policy per URL kind) and bounded by a
step's deadline; the session's keys and fields are in redis_layout.py, the client each URL kind
gets in redis_connect.py. Sessions with `wait_replicas > 0` have each commit acknowledged by
that many replicas (WAIT on the commit's connection, on a Cluster the connection to the
session's primary) or get NotReplicated.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from state.redis_connect import Clients, client_factory
from state.redis_layout import (
    SEQ_BYTES,
    commit_args,
    log_key,
    owner_key,
    parse_outcome,
    parse_record,
    record_fields,
    session_key,
    ttl_ms,
)
from state.redis_scripts import COMMIT_LUA, CREATE_LUA, RESERVE_LUA, TOUCH_LUA
from state.redis_url import CLUSTER_SCHEME, SENTINEL_SCHEME, RedisCredentials, redacted
from state.session import (
    CommitOutcome,
    CommitStatus,
    SessionId,
    SessionRecord,
    StepCommit,
    short_id,
)
from state.store import DeadlineSpent, NotReplicated, StoreUnavailable, answer_deadline
from state.store_metrics import REDIS_COMMIT_SECONDS, STATE_DEADLINE_GIVE_UPS, STATE_RETRIES

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Retried: errors where the command may not have reached Redis, and a write refused by a demoted
# primary (mid-failover); every retried call is idempotent or conditional on seq. Anything else
# is a bug. A Cluster mid-failover answers CLUSTERDOWN or has a slot without a primary for a
# moment (redis-py follows MOVED and ASK itself).
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
    ClusterDownError,
    SlotNotCoveredError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How a store call is retried after a transient error before StoreUnavailable."""

    attempts: int  # at most this many tries in all
    budget_s: float  # and no try starts later than this after the first
    first_wait_s: float = 0.05  # doubles per retry, plus up to this much jitter
    max_wait_s: float = 0.5


# One named server: three quick tries tell a blip from an outage, and the caller hears at once.
DIRECT_RETRY = RetryPolicy(attempts=3, budget_s=5.0)
# Behind Sentinel the primary may be mid-failover: down-after-milliseconds, the vote and the
# promotion. 15 s covers one with down-after-milliseconds up to ~10 s; past that, the store is
# unavailable. The attempt cap only guards against a bug spinning; the budget is the limit.
SENTINEL_RETRY = RetryPolicy(attempts=200, budget_s=15.0)
# A Cluster promotes a replica itself, after cluster-node-timeout and a vote of the primaries:
# the same budget covers a cluster-node-timeout up to ~10 s.
CLUSTER_RETRY = SENTINEL_RETRY
RETRY_ATTEMPTS = DIRECT_RETRY.attempts

# Threads for the store calls of steps (see _call): each call is sub-millisecond while Redis
# answers; while it does not, the calls that hang hold these threads (for one attempt at most)
# and the ones queued behind them are given up at their deadline, never started.
STEP_CALL_THREADS = 16
# WAIT blocks the connection: its timeout must leave the socket timeout room to spare.
WAIT_SHARE_OF_SOCKET_TIMEOUT = 0.5


def retry_policy_for(url: str) -> RetryPolicy:
    scheme = urlsplit(url).scheme
    if scheme == SENTINEL_SCHEME:
        return SENTINEL_RETRY
    return CLUSTER_RETRY if scheme == CLUSTER_SCHEME else DIRECT_RETRY


class RedisSessionStore:
    """Sessions in Redis; retries only idempotent or conditional calls, then StoreUnavailable."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float,
        retry: RetryPolicy | None = None,
        credentials: RedisCredentials | None = None,
    ) -> None:
        """credentials: AUTH password and (rediss://) TLS files beyond what the URL says."""
        self._url = redacted(url)
        self._socket_timeout_s = socket_timeout_s
        self._retry = retry or retry_policy_for(url)
        # a bad URL fails here
        self._open = client_factory(url, socket_timeout_s, credentials or RedisCredentials())
        self._open_lock = threading.Lock()
        self._step_calls = ThreadPoolExecutor(STEP_CALL_THREADS, thread_name_prefix="store-step")
        # A RedisCluster client reads the slot map as it is made, so it is made on first use
        # (inside a retried call): a store that does not answer yet is not a crash at start-up.
        # The others connect on first use by themselves.
        self._clients: Clients | None = None
        if urlsplit(url).scheme != CLUSTER_SCHEME:
            self._opened()

    @property
    def _client(self) -> redis.Redis | RedisCluster:
        return self._opened().client

    @property
    def _create_script(self) -> Script:
        return self._opened().create_script

    @property
    def _commit_script(self) -> Script:
        return self._opened().commit_script

    def _opened(self) -> Clients:
        if self._clients is None:
            with self._open_lock:
                if self._clients is None:
                    client, sentinel = self._open()
                    self._clients = Clients(
                        client,
                        sentinel,
                        client.register_script(CREATE_LUA),
                        client.register_script(COMMIT_LUA),
                    )
        return self._clients

    def create(self, record: SessionRecord) -> None:
        key = session_key(record.session_id)
        args = [ttl_ms(record.ttl_s), *record_fields(record)]
        # Not retried: a create that went through would come back as "already exists".
        created = self._call("create", lambda: self._create_script([key], args), retry=False)
        if not created:
            raise ValueError(f"session={short_id(record.session_id)} already exists")

    def load(self, session_id: SessionId) -> SessionRecord | None:
        key = session_key(session_id)
        fields = self._call("load", lambda: self._client.hgetall(key))
        return parse_record(session_id, cast("dict[bytes, bytes]", fields)) if fields else None

    def commit(self, session_id: SessionId, step: StepCommit) -> CommitOutcome:
        if step.new_seq <= step.expected_seq:  # an equal seq would make a replayed commit look new
            raise ValueError(
                f"session={short_id(session_id)} new_seq {step.new_seq} <= expected "
                f"{step.expected_seq}"
            )
        self._check_wait(step.wait_replicas, step.wait_timeout_s)
        keys = [session_key(session_id), log_key(session_id)]
        args = commit_args(step)
        with REDIS_COMMIT_SECONDS.time():
            if step.wait_replicas > 0:
                reply, acked = self._call(
                    "commit",
                    lambda: self._script_then_wait(
                        COMMIT_LUA, keys, args, step.wait_replicas, step.wait_timeout_s
                    ),
                )
            else:
                reply, acked = self._call("commit", lambda: self._commit_script(keys, args)), 0
        outcome = parse_outcome(cast("list[bytes]", reply))
        if outcome.status is not CommitStatus.COMMITTED:
            _log.info(
                "session=%s commit %s: expected_seq=%d current_seq=%s",
                short_id(session_id),
                outcome.status.value,
                step.expected_seq,
                outcome.current_seq,
            )
        elif acked < step.wait_replicas:
            raise self._not_replicated(
                f"session={short_id(session_id)} seq={step.new_seq} is committed on the primary "
                "but",
                acked,
                step.wait_replicas,
                step.wait_timeout_s,
            )
        return outcome

    def confirm_replicated(self, session_id: SessionId, replicas: int, timeout_s: float) -> None:
        if replicas <= 0:
            return
        self._check_wait(replicas, timeout_s)
        keys = [session_key(session_id)]
        _, acked = self._call(
            "confirm_replicated",
            lambda: self._script_then_wait(TOUCH_LUA, keys, [], replicas, timeout_s),
        )
        if acked < replicas:
            raise self._not_replicated(
                f"session={short_id(session_id)}: its last write was", acked, replicas, timeout_s
            )

    def observations(
        self, session_id: SessionId, first_seq: int, last_seq: int
    ) -> list[bytes] | None:
        key = log_key(session_id)
        entries = cast(
            "list[bytes]", self._call("observations", lambda: self._client.lrange(key, 0, -1))
        )
        by_seq = {int.from_bytes(e[:SEQ_BYTES], "big"): e[SEQ_BYTES:] for e in entries}
        wanted = range(first_seq, last_seq + 1)
        if any(seq not in by_seq for seq in wanted):
            return None
        return [by_seq[seq] for seq in wanted]

    def log_depth(self, session_id: SessionId) -> int:
        key = log_key(session_id)
        return int(self._call("log_depth", lambda: self._client.llen(key)))

    def ttl_left_s(self, session_id: SessionId) -> float | None:
        key = session_key(session_id)
        ms = self._call("ttl_left_s", lambda: self._client.pttl(key))
        if ms == -2:  # no such key
            return None
        return math.inf if ms == -1 else ms / 1000.0  # -1: a key without expiry (set by hand)

    def delete(self, session_id: SessionId) -> bool:
        keys = [session_key(session_id), log_key(session_id)]
        return self._call("delete", lambda: self._client.unlink(*keys), retry=False) > 0

    def reserve_for_owner(self, owner: str, session_id: SessionId, limit: int) -> bool:
        key = owner_key(owner)
        args: list[int | str] = [limit, session_id]
        if self._call("reserve", lambda: self._client.eval(RESERVE_LUA, 1, key, *args)):
            return True
        # Full: drop the ids of sessions that closed or expired since, then try once more.
        members = cast("set[bytes]", self._call("reserve", lambda: self._client.smembers(key)))
        gone = [m for m in members if not self._exists(session_key(SessionId(m.decode())))]
        if gone:
            self._call("reserve", lambda: self._client.srem(key, *gone))
        return bool(self._call("reserve", lambda: self._client.eval(RESERVE_LUA, 1, key, *args)))

    def release_for_owner(self, owner: str, session_id: SessionId) -> None:
        key = owner_key(owner)
        self._call("release", lambda: self._client.srem(key, session_id))

    def _exists(self, key: str) -> bool:
        return bool(self._call("reserve", lambda: self._client.exists(key)))

    def replicas(self) -> int:
        """On a Cluster, the fewest any primary has: a session may live on any of them."""
        return self._call("replicas", self._fewest_replicas)

    def ping(self) -> bool:
        """False, not an exception, when Redis does not answer: this is a health probe."""
        try:
            return self._call("ping", lambda: self._client.ping())
        except StoreUnavailable as exc:
            _log.warning("%s", exc)
            return False

    def close(self) -> None:
        self._step_calls.shutdown(wait=False, cancel_futures=True)
        if self._clients is None:
            return
        self._clients.client.close()
        if self._clients.sentinel is not None:
            self._clients.sentinel.close()

    def _script_then_wait(
        self,
        script: str,
        keys: Sequence[str],
        args: Sequence[int | str | bytes],
        replicas: int,
        timeout_s: float,
    ) -> tuple[Any, int]:
        """The script, then WAIT, in one round trip on one connection: WAIT counts the replicas
        that have this connection's writes, so it must follow them on the same connection.

        EVAL with the body, not EVALSHA: a NOSCRIPT (a primary new since a failover) would
        still pay the WAIT before the retry could load the script, doubling the wait.
        """
        # Not a transaction: WAIT inside MULTI does not wait.
        server = self._server_of(keys[0])
        try:
            with server.pipeline(transaction=False) as pipe:
                pipe.eval(script, len(keys), *keys, *args)
                pipe.wait(replicas, max(1, round(timeout_s * 1000)))  # WAIT 0: forever
                reply, acked = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            if isinstance(self._client, RedisCluster):  # the primary may have failed over
                self._refresh_slot_map()
            raise
        for result in (reply, acked):
            if isinstance(result, Exception):
                raise result
        return reply, int(acked)

    def _check_wait(self, replicas: int, timeout_s: float) -> None:
        if replicas < 0:
            raise ValueError(f"wait_replicas must be >= 0, got {replicas}")
        limit_s = self._socket_timeout_s * WAIT_SHARE_OF_SOCKET_TIMEOUT
        if replicas > 0 and not 0 < timeout_s <= limit_s:
            raise ValueError(
                f"wait_timeout_s={timeout_s} must be > 0 and at most half the store's socket "
                f"timeout (socket_timeout_s={self._socket_timeout_s}, the coordinator's "
                "redis_timeout_s), or the socket gives up while WAIT is still waiting"
            )

    def _not_replicated(
        self, what: str, acked: int, replicas: int, timeout_s: float
    ) -> NotReplicated:
        return NotReplicated(
            f"store={self._url} {what} acknowledged by {acked} of {replicas} replica(s) within "
            f"wait_timeout_s={timeout_s}: a failover could lose it, so the step must not be "
            "acknowledged; retry the same seq (its stored reply is returned once replicated), "
            "check the replicas' links to the primary, or lower the session's wait_replicas"
        )

    def _call(self, operation: str, fn: Callable[[], _T], *, retry: bool = True) -> _T:
        """fn under the retry policy; inside `answer_by` (a step's calls) on a thread of
        `_step_calls`, waited for until the deadline only: a socket timeout (redis_timeout_s)
        longer than the time left must not hold the step, and redis-py has no per-command
        timeout. A call given up that way ends in the background within one more attempt."""
        deadline = answer_deadline()
        if deadline is None:
            return self._retried(operation, fn, retry, None)
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            STATE_DEADLINE_GIVE_UPS.labels(operation=operation).inc()
            raise DeadlineSpent(
                f"store={self._url} operation={operation}: not sent, the step's deadline had "
                f"passed {-left_s * 1e3:.0f} ms before"
            )
        call = self._step_calls.submit(
            contextvars.copy_context().run, self._retried, operation, fn, retry, deadline
        )
        try:
            return call.result(timeout=left_s)
        except FutureTimeout:
            call.cancel()  # still queued: it never starts
        STATE_DEADLINE_GIVE_UPS.labels(operation=operation).inc()
        raise StoreUnavailable(
            f"store={self._url} operation={operation}: no answer by the step's deadline "
            f"({left_s * 1e3:.0f} ms were left when called); given up, a write may still land"
        )

    def _retried(
        self, operation: str, fn: Callable[[], _T], retry: bool, deadline: float | None
    ) -> _T:
        """fn, retried after transient errors by the policy and, given a deadline
        (time.monotonic()), never started again after it."""
        policy = self._retry
        stop = stop_after_attempt(policy.attempts if retry else 1) | stop_before_delay(
            policy.budget_s
        )
        retrying = Retrying(
            retry=retry_if_exception_type(_TRANSIENT),
            stop=stop if deadline is None else stop | _StopAt(deadline),
            wait=wait_exponential_jitter(
                multiplier=policy.first_wait_s, max=policy.max_wait_s, jitter=policy.first_wait_s
            ),
            before_sleep=partial(self._count_retry, operation),
            reraise=True,
        )
        started = time.monotonic()
        try:
            return retrying(lambda: self._attempt(fn))
        except _TRANSIENT as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            hint = (
                "the server is a read-only replica: point the URL at the primary, or use a "
                f"{SENTINEL_SCHEME}:// URL"
                if isinstance(exc, redis.ReadOnlyError)
                else "check the Redis URL and that the server (or, behind Sentinel, a primary) "
                "is up"
            )
            raise StoreUnavailable(
                f"store={self._url} operation={operation}: no answer after {attempts} "
                f"attempt(s) in {time.monotonic() - started:.1f}s ({exc}); {hint}"
            ) from exc
        except redis.RedisError as exc:  # OOM, MISCONF, BUSY...: Redis refuses, retry later
            hint = (
                f"; the server is a Redis Cluster node: use a {CLUSTER_SCHEME}:// URL"
                if isinstance(exc, AskError)
                else ""
            )
            raise StoreUnavailable(
                f"store={self._url} operation={operation}: Redis refused: {exc}{hint}"
            ) from exc

    def _attempt(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except AskError as exc:  # MOVED too
            if not isinstance(self._client, RedisCluster):
                raise  # a redis:// URL that names a Cluster node: see _call
            # From _server_of's direct connection: the slot moved since the client last read
            # the slot map, so nothing ran; read it anew and retry.
            self._refresh_slot_map()
            raise redis.ConnectionError(f"the session's slot moved ({exc})") from exc
        except redis.ResponseError as exc:
            if not _is_read_only(exc):
                raise
            # The connection still points at a demoted primary. Drop the idle connections so
            # that the next one asks Sentinel anew (redis-py does this for a plain READONLY
            # but not for one raised inside a script, which Redis 6.2 reports as a script error).
            if isinstance(self._client, RedisCluster):
                self._refresh_slot_map()
            else:
                self._client.connection_pool.disconnect(inuse_connections=False)
            raise redis.ReadOnlyError(str(exc)) from exc

    def _refresh_slot_map(self) -> None:
        """Read the Cluster's slot map anew, after the direct connection of _server_of met a
        moved slot or a dead primary (RedisCluster does so itself for its own commands)."""
        assert isinstance(self._client, RedisCluster)
        try:
            self._client.nodes_manager.initialize()
        except RedisClusterException as exc:  # no node answered: the retry will tell
            _log.warning("store=%s: could not read the slot map: %s", self._url, exc)

    def _server_of(self, key: str) -> redis.Redis:
        """A client of the one server that holds `key`: on a Cluster its slot's primary, for
        what must share a connection with the key's writes (WAIT)."""
        if not isinstance(self._client, RedisCluster):
            return self._client
        # redis.cluster is partly unannotated, hence the ignores.
        node = self._client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return self._client.get_redis_connection(node)

    def _fewest_replicas(self) -> int:
        servers = [self._client]
        if isinstance(self._client, RedisCluster):
            primaries = self._client.get_primaries()  # type: ignore[no-untyped-call]
            servers = [self._client.get_redis_connection(node) for node in primaries]
        counts = []
        for server in servers:
            info = cast("dict[str, object]", server.info("replication"))
            counts.append(int(str(info.get("connected_slaves", 0))))
        return min(counts, default=0)

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


class _StopAt(stop_base):
    """Stop when the next attempt would start at or after `deadline` (time.monotonic())."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline


def _is_read_only(exc: redis.ResponseError) -> bool:
    """The server is a replica: a plain READONLY, one from inside a script, or a WAIT refused."""
    message = str(exc)
    return (
        isinstance(exc, redis.ReadOnlyError)
        or "READONLY You can't write" in message
        or "WAIT cannot be used with replica" in message
    )
