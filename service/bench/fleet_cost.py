"""`actionmesh bench --scale`: what one step and one session cost the fleet, measured on a
local cluster, and the sizing those figures give (docs/sizing.md).

- Redis round trips per step: Redis's MONITOR stream while robots step, counted per request a
  client sends: commands a Lua script runs inside Redis are not requests (MONITOR tags them
  `lua`), and a MULTI..EXEC block is one. A non-transactional pipeline (the EVAL + WAIT of a
  session with wait_replicas) would count as its commands, not as one round trip.
- Redis bytes per session: MEMORY USAGE of a session's keys once it has stepped `steps` times
  (its observation log full at the default depth).
- Coordinator CPU per step: the coordinator process's user + system CPU time over the steps
  (/proc/<pid>/stat, every thread), divided by the steps. It does no model compute unless an
  answer falls back to the student, so with every answer FULL this is all outside model
  compute. Redis's and each shard's CPU per step are measured the same way, over the same steps.
- Idle sessions: Redis used_memory and the coordinator's RSS before and after opening them.

With --redis-cluster-primaries N the Redis figures are summed over the Cluster's primaries.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import redis
from tqdm import tqdm

from chaos.robot_sim import SimulatedArm
from service.bench.sizing import SIZING_EXAMPLES, fleet_size
from service.local.embedded_redis import probe_client
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2, session_pb2_grpc, tensor_codec
from service.runtime.command_settings import BenchSettings

WARMUP_STEPS = 10
IDLE_TTL_S = 900.0  # the idle sessions must outlive their own opening and the measurement
OPEN_THREADS = 8
START_MARK = "actionmesh-bench-scale-start"
END_MARK = "actionmesh-bench-scale-end"
MONITOR_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"bench --scale: no VmRSS for pid {pid}")


def machine() -> dict[str, object]:
    model = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {"cpus": os.cpu_count(), "cpu_model": model}


def _redis_cpu_s(servers: list[redis.Redis]) -> float:
    cpu = [server.info("cpu") for server in servers]
    return sum(float(c["used_cpu_user"]) + float(c["used_cpu_sys"]) for c in cpu)


def _used_memory(servers: list[redis.Redis]) -> int:
    return sum(int(server.info("memory")["used_memory"]) for server in servers)


class _Robot:
    """One session stepped back to back by a simulated arm."""

    def __init__(self, stub: session_pb2_grpc.SessionServiceStub, index: int) -> None:
        self._stub = stub
        opened = stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id=f"bench-scale-{index}"), timeout=10
        )
        self.session_id = opened.session_id
        spec = opened.action_spec
        self._arm = SimulatedArm(spec.observation_dim, spec.joints, seed=index)
        self.seq = 0
        self.full = 0

    def step(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            request = session_pb2.StepRequest(
                session_id=self.session_id,
                seq=self.seq,
                observation=tensor_codec.encode(self._arm.observation()),
            )
            reply = self._stub.Step(request, timeout=10)
            self.full += reply.serve_mode == session_pb2.SERVE_MODE_FULL
            self._arm.apply(tensor_codec.decode(reply.action), 0.02)


def _all_step(robots: list[_Robot], n: int) -> None:
    threads = [threading.Thread(target=robot.step, args=(n,)) for robot in robots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class _Requests:
    """Requests clients sent to Redis while MONITOR watched, by command."""

    by_command: Counter[str]

    @property
    def total(self) -> int:
        return sum(self.by_command.values())


@contextmanager
def monitored(ports: list[int]) -> Iterator[_Requests]:
    """Count the requests the Redis servers on `ports` receive inside the block (see the module
    docstring); the counts are there once the block has ended."""
    total = _Requests(Counter())
    with ExitStack() as stack:
        each = [stack.enter_context(_monitored_one(port)) for port in ports]
        yield total
    for requests in each:
        total.by_command.update(requests.by_command)


@contextmanager
def _monitored_one(port: int) -> Iterator[_Requests]:
    requests = _Requests(Counter())
    started, failed = threading.Event(), list[BaseException]()

    def watch() -> None:
        in_multi: set[str] = set()
        counting = False
        try:
            # No read timeout: a Cluster primary may hold none of the robots' sessions, and
            # the END marker ends the watch.
            watched = redis.Redis(host="127.0.0.1", port=port, socket_timeout=None)
            with watched, watched.monitor() as monitor:  # type: ignore[no-untyped-call]
                marker.echo(START_MARK)
                for command in monitor.listen():
                    words = command["command"].split(" ", 1)
                    name, arg = words[0].lower(), (words[1] if len(words) > 1 else "")
                    if name == "echo" and arg == START_MARK:
                        counting = True
                        started.set()
                        continue
                    if name == "echo" and arg == END_MARK:
                        return
                    client = f"{command['client_address']}:{command['client_port']}"
                    if not counting or command["client_type"] == "lua" or client in in_multi:
                        if name in ("exec", "discard"):
                            in_multi.discard(client)
                        continue
                    if name == "multi":
                        in_multi.add(client)
                    requests.by_command[name] += 1
        except (OSError, redis.RedisError) as exc:
            failed.append(exc)
            started.set()

    with probe_client(port) as marker:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if not started.wait(MONITOR_TIMEOUT_S) or failed:
            raise RuntimeError(f"bench --scale: Redis MONITOR did not start: {failed}")
        yield requests
        marker.echo(END_MARK)
        watcher.join(MONITOR_TIMEOUT_S)
    if watcher.is_alive() or failed:
        raise RuntimeError(f"bench --scale: Redis MONITOR did not finish: {failed}")


def _open_idle(stub: session_pb2_grpc.SessionServiceStub, n: int) -> None:
    def open_one(i: int) -> None:
        stub.OpenSession(
            session_pb2.OpenSessionRequest(client_id=f"idle-{i}", ttl_s=IDLE_TTL_S), timeout=30
        )

    with ThreadPoolExecutor(OPEN_THREADS) as pool:
        for _ in tqdm(pool.map(open_one, range(n)), total=n, desc="idle sessions", leave=False):
            pass


def _session_bytes(servers: list[redis.Redis], session_id: str) -> int:
    """MEMORY USAGE of the session's keys, asked of the server that holds them."""
    keys = (f"am:{{{session_id}}}:session", f"am:{{{session_id}}}:obslog")
    for server in servers:
        try:
            return sum(int(server.memory_usage(key, samples=0) or 0) for key in keys)
        except redis.ResponseError:  # MOVED: another Cluster primary holds the slot
            continue
    raise RuntimeError(f"bench --scale: no Redis server holds session={session_id}")


def _redis_ports(cluster: LocalCluster) -> list[int]:
    """The private Redis server, or the private Cluster's primaries (replicas' work is not
    counted: it is not what a step waits for)."""
    if cluster.redis_cluster is not None:
        return [node.port for node in cluster.redis_cluster.primary_nodes]
    assert cluster.redis is not None
    return [cluster.redis.port]


def run(settings: BenchSettings) -> dict[str, object]:
    robots_n, steps = settings.scale_robots, settings.steps
    with (
        LocalCluster(settings) as cluster,
        grpc.insecure_channel(cluster.address) as channel,
        ExitStack() as clients,
    ):
        assert cluster.coordinator is not None
        stub = session_pb2_grpc.SessionServiceStub(channel)
        coordinator = cluster.coordinator.pid
        shard_pids = [shard.pid for shard in cluster.shards]
        ports = _redis_ports(cluster)
        stats = [clients.enter_context(probe_client(port)) for port in ports]
        robots = [_Robot(stub, i) for i in range(robots_n)]
        _all_step(robots, WARMUP_STEPS)
        with monitored(ports) as requests:
            _all_step(robots, steps)
        monitored_steps = robots_n * steps

        full_before = sum(robot.full for robot in robots)
        cpu_before = process_cpu_s(coordinator)
        redis_before = _redis_cpu_s(stats)
        shards_before = [process_cpu_s(pid) for pid in shard_pids]
        started = time.monotonic()
        _all_step(robots, steps)
        elapsed = time.monotonic() - started
        timed_steps = robots_n * steps
        coordinator_cpu = process_cpu_s(coordinator) - cpu_before
        redis_cpu = _redis_cpu_s(stats) - redis_before
        shard_cpu = [process_cpu_s(p) - b for p, b in zip(shard_pids, shards_before, strict=True)]
        full = sum(robot.full for robot in robots) - full_before

        session_bytes = [_session_bytes(stats, robot.session_id) for robot in robots]

        memory_before, rss_before = _used_memory(stats), process_rss_bytes(coordinator)
        _open_idle(stub, settings.scale_idle_sessions)
        idle_redis = _used_memory(stats) - memory_before
        idle_rss = process_rss_bytes(coordinator) - rss_before

    per_stage = [0.0] * cluster.model.n_stages
    for shard, cpu in zip(cluster.shards, shard_cpu, strict=True):
        per_stage[int(shard.name.split("-")[1])] += cpu
    idle = settings.scale_idle_sessions
    result: dict[str, object] = {
        "machine": machine(),
        "stages": cluster.model.n_stages,
        "robots": robots_n,
        "redis_primaries": len(ports),
        "steps": monitored_steps,
        "redis_round_trips_per_step": round(requests.total / monitored_steps, 3),
        "redis_requests_per_step_by_command": {
            name: round(count / monitored_steps, 3)
            for name, count in sorted(requests.by_command.items())
        },
        "redis_bytes_per_session": round(sum(session_bytes) / len(session_bytes)),
        "coordinator_cpu_us_per_step": round(coordinator_cpu / timed_steps * 1e6, 1),
        "redis_cpu_us_per_step": round(redis_cpu / timed_steps * 1e6, 1),
        "shard_cpu_us_per_step": [round(cpu / timed_steps * 1e6, 1) for cpu in per_stage],
        "steps_per_s": round(timed_steps / elapsed, 1),
        "full_fraction": round(full / timed_steps, 4),
        "idle_sessions": idle,
        "idle_sessions_redis_bytes": idle_redis,
        "idle_sessions_coordinator_rss_bytes": idle_rss,
        "redis_bytes_per_idle_session": round(idle_redis / idle) if idle else None,
    }
    result["sizing"] = [
        {"robots": n, "rate_hz": hz, **fleet_size(result, n, hz)} for n, hz in SIZING_EXAMPLES
    ]
    return result


def print_table(result: dict[str, object]) -> None:
    m = cast("dict[str, object]", result["machine"])
    print(f"machine: {m['cpus']} cpus, {m['cpu_model']}")
    print(
        f"stages={result['stages']} robots={result['robots']} steps={result['steps']} "
        f"redis primaries={result['redis_primaries']} "
        f"steps/s={result['steps_per_s']} FULL={result['full_fraction']}"
    )
    print(f"redis round trips per step      {result['redis_round_trips_per_step']}")
    print(f"  by command                    {result['redis_requests_per_step_by_command']}")
    print(f"redis bytes per session         {result['redis_bytes_per_session']}")
    print(f"coordinator CPU per step (us)   {result['coordinator_cpu_us_per_step']}")
    print(f"redis CPU per step (us)         {result['redis_cpu_us_per_step']}")
    print(f"shard CPU per step (us), stage  {result['shard_cpu_us_per_step']}")
    print(
        f"{result['idle_sessions']} idle sessions: redis +{result['idle_sessions_redis_bytes']} B "
        f"({result['redis_bytes_per_idle_session']} B each), coordinator RSS "
        f"+{result['idle_sessions_coordinator_rss_bytes']} B"
    )
    print(
        f"{'robots':>8} {'Hz':>5} {'steps/s':>9} {'coordinators':>13} {'shards/stage':>13} {'redis':>6}"
    )
    for row in cast("list[dict[str, Any]]", result["sizing"]):
        print(
            f"{row['robots']:>8} {row['rate_hz']:>5g} {row['steps_per_s']:>9} "
            f"{row['coordinators']:>13} {row['shards_per_stage']:>13} {row['redis_primaries']:>6}"
        )
