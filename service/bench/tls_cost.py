"""`actionmesh bench --tls`: what mutual TLS costs a step. A second cluster, the same but with
mutual TLS on every gRPC hop, runs beside the plaintext one; both are stepped in alternating
rounds (so that the machine's noise falls on both alike) and their p50/p99 compared."""

from __future__ import annotations

from service.bench.latency import percentile_ms
from service.local.local_cluster import LocalCluster
from service.proto import session_pb2_grpc
from service.runtime.command_settings import BenchSettings

ROUNDS = 4


def measure(
    settings: BenchSettings, plain: session_pb2_grpc.SessionServiceStub
) -> dict[str, float]:
    """Unary and streamed step latency on a TLS twin of the running plaintext cluster (whose
    stub is `plain`), alternating between the two; the keys are `tls_*`."""
    from service.bench.step_latency import cluster_latencies, stream_latencies

    twin = settings.model_copy(
        update={
            "tls": True,
            "port": 0,
            "work_dir": None if settings.work_dir is None else settings.work_dir / "tls-twin",
        }
    )
    per_round = settings.model_copy(update={"steps": max(10, settings.steps // ROUNDS)})
    unary: dict[str, list[float]] = {"plain": [], "tls": []}
    streamed: dict[str, list[float]] = {"plain": [], "tls": []}
    with LocalCluster(twin) as cluster, cluster.channel("robot-a") as channel:
        stubs = {"plain": plain, "tls": session_pb2_grpc.SessionServiceStub(channel)}
        for _ in range(ROUNDS):
            for name, stub in stubs.items():
                unary[name] += [s.round_trip_ms / 1e3 for s in cluster_latencies(stub, per_round)]
                streamed[name] += stream_latencies(stub, per_round)
    plain_p50, tls_p50 = percentile_ms(unary["plain"], 50), percentile_ms(unary["tls"], 50)
    return {
        "tls_cluster_p50_ms": round(tls_p50, 3),
        "tls_cluster_p99_ms": round(percentile_ms(unary["tls"], 99), 3),
        "tls_stream_p50_ms": round(percentile_ms(streamed["tls"], 50), 3),
        "tls_stream_p99_ms": round(percentile_ms(streamed["tls"], 99), 3),
        # the plaintext cluster in the same alternating rounds: what the TLS figures compare to
        "tls_baseline_cluster_p50_ms": round(plain_p50, 3),
        "tls_baseline_stream_p50_ms": round(percentile_ms(streamed["plain"], 50), 3),
        "tls_cost_p50_ms": round(tls_p50 - plain_p50, 3),
    }


def print_table(result: dict[str, object]) -> None:
    print("mutual TLS (alternating rounds against the plaintext cluster):")
    print(f"{'':<22} {'p50 ms':>9}")
    print(f"{'plaintext unary':<22} {result['tls_baseline_cluster_p50_ms']:>9}")
    print(
        f"{'TLS unary':<22} {result['tls_cluster_p50_ms']:>9}  (p99 {result['tls_cluster_p99_ms']})"
    )
    print(f"{'plaintext streamed':<22} {result['tls_baseline_stream_p50_ms']:>9}")
    print(
        f"{'TLS streamed':<22} {result['tls_stream_p50_ms']:>9}  (p99 {result['tls_stream_p99_ms']})"
    )
    print(f"TLS costs a unary step {result['tls_cost_p50_ms']} ms at p50")
