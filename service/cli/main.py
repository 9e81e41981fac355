"""The `actionmesh` command: one entry point, a subcommand per job, `--help` on each."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

from service.local.child_process import die_with_parent
from service.runtime.settings import (
    CKPT_ACTIONS,
    BenchSettings,
    CkptSettings,
    ClusterSettings,
    CoordinatorSettings,
    DemoSettings,
    Settings,
    ShardSettings,
    StatusSettings,
    TrainSettings,
    add_flags,
    load,
)


def _up(args: argparse.Namespace) -> int:
    from service.local.local_cluster import LocalCluster

    settings = load(ClusterSettings, "up", args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(settings) as cluster:
        print(f"coordinator {cluster.address}  redis {cluster.redis_url}  etcd {cluster.etcd_url}")
        print(f"logs {cluster.log_dir}")
        print(
            f"see the stages: actionmesh status --etcd {cluster.etcd_url} --cluster {settings.cluster}"
        )
        assert cluster.checkpoints is not None
        print(
            "roll the cluster to another version (or back): actionmesh ckpt promote VERSION "
            f"(or rollback) --flash-dir {cluster.checkpoints.flash.root} "
            f"--remote {cluster.checkpoints.remote_url} "
            f"--trusted-keys {cluster.checkpoints.public_key} "
            f"--signing-key {cluster.checkpoints.private_key} "
            f"--etcd {cluster.etcd_url} --cluster {settings.cluster}"
        )
        print("press Ctrl-C to stop every process")
        stop.wait()
    print("stopped")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.bench import demo

    return demo.run(load(DemoSettings, "demo", args))


def _bench(args: argparse.Namespace) -> int:
    from service.bench import step_latency

    return step_latency.main(load(BenchSettings, "bench", args))


def _ckpt(args: argparse.Namespace) -> int:
    from service.cli import ckpt

    return ckpt.main(load(CkptSettings, "ckpt", args), args.action, args.version)


def _status(args: argparse.Namespace) -> int:
    from service.cli import status

    return status.main(load(StatusSettings, "status", args))


def _train(args: argparse.Namespace) -> int:
    from service.cli import train

    return train.main(load(TrainSettings, "train", args))


def _coordinator(args: argparse.Namespace) -> int:
    from service.coordinator import coordinator_process

    coordinator_process.run(load(CoordinatorSettings, "coordinator", args))
    return 0


def _shard(args: argparse.Namespace) -> int:
    from service.shard import shard_process

    shard_process.run(load(ShardSettings, "shard", args))
    return 0


_COMMANDS: list[tuple[str, type[Settings], Callable[[argparse.Namespace], int], str]] = [
    (
        "up",
        ClusterSettings,
        _up,
        "Start a local cluster (Redis, one shard per stage, a coordinator) and wait.",
    ),
    ("demo", DemoSettings, _demo, "Start a local cluster and drive a simulated robot against it."),
    (
        "bench",
        BenchSettings,
        _bench,
        "Measure in-process against cluster step latency, and throughput.",
    ),
    (
        "ckpt",
        CkptSettings,
        _ckpt,
        "Versioned weight snapshots: keygen, create, list, show, verify, push, pull, promote, rollback, gc.",
    ),
    (
        "status",
        StatusSettings,
        _status,
        "Show who leads each stage and who stands by, live from etcd, with health.",
    ),
    (
        "train",
        TrainSettings,
        _train,
        "Train the model, its exit heads and student on a reach task; write weights and a quality table.",
    ),
    (
        "coordinator",
        CoordinatorSettings,
        _coordinator,
        "Serve the session API to robots (actionmesh.v1.SessionService).",
    ),
    (
        "shard",
        ShardSettings,
        _shard,
        "Serve one pipeline stage (actionmesh.internal.v1.StageService).",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actionmesh",
        description="Serve recurrent robot action models split into pipeline stages across nodes. "
        "Settings come from a TOML file ([<command>] table), then ACTIONMESH_* env vars, then flags.",
    )
    parser.add_argument("--log-level", default="INFO", help="Python log level (default: INFO).")
    parser.add_argument("--die-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, settings_cls, handler, help_text in _COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == "ckpt":
            sub.add_argument("action", choices=CKPT_ACTIONS, help="What to do.")
            sub.add_argument(
                "version", nargs="?", default=None, help="A version id, where the action takes one."
            )
        add_flags(sub, settings_cls)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
