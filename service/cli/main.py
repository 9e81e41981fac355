"""The `actionmesh` command: one entry point, a subcommand per job, `--help` on each."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from service.local.child_process import die_with_parent
from service.runtime import logs
from service.runtime.command_settings import (
    CERTS_ACTIONS,
    CHAOS_ACTIONS,
    CKPT_ACTIONS,
    TOKEN_ACTIONS,
    BenchSettings,
    CertsSettings,
    ChaosSettings,
    CkptSettings,
    DemoSettings,
    DrainSettings,
    ExportSettings,
    PlanSettings,
    StatusSettings,
    TokenSettings,
    TrainSettings,
)
from service.runtime.settings import (
    ClusterSettings,
    CoordinatorSettings,
    InvalidSettings,
    Settings,
    ShardSettings,
    add_flags,
    load,
)

# Each handler imports its command's module when it runs, not before: `ckpt list`, `status`
# and `--help` must not pay for torch (tests/integration/test_cli_startup.py checks it).


def _up(settings: ClusterSettings, args: argparse.Namespace) -> int:
    import yaml

    from service.local import prometheus_config
    from service.local.local_cluster import LocalCluster

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(settings) as cluster:
        print(f"coordinator {cluster.address}  redis {cluster.redis_url}  etcd {cluster.etcd_url}")
        if settings.coordinators > 1:
            print(f"coordinators {','.join(cluster.addresses)}  (give the client every one)")
        print(f"logs {cluster.log_dir}")
        if cluster.tls_dir is not None:
            tls_dir = cluster.tls_dir
            print(
                f"mutual TLS on every gRPC hop (plaintext refused); certificates in {tls_dir}: "
                f"robots present {tls_dir / 'robot-a.pem'} (key {tls_dir / 'robot-a.key'}) or "
                f"robot-b, and trust {tls_dir / 'ca.pem'}"
            )
        if cluster.redis_password_file is not None:
            print(f"redis wants AUTH: the password is in {cluster.redis_password_file}")
        coordinators, shards = cluster.metrics_targets()
        scrape = prometheus_config.scrape_config(coordinators, shards)
        scrape_path = cluster.work_dir / "prometheus.yml"
        scrape_path.write_text(yaml.safe_dump(scrape, sort_keys=False))
        print(f"metrics coordinators {','.join(coordinators)}  shards {','.join(shards)}")
        print(f"scrape them: prometheus --config.file {scrape_path}")
        print(
            f"see the stages: actionmesh status --etcd {cluster.etcd_url} --cluster {settings.cluster}"
            + ("" if cluster.tls_dir is None else f" --tls-dir {cluster.tls_dir}")
        )
        assert cluster.checkpoints is not None
        print(
            "roll the cluster to another version (or back): actionmesh ckpt promote VERSION "
            f"(or rollback) --flash-dir {cluster.checkpoints.flash.root} "
            f"--remote {cluster.checkpoints.remote_url} "
            f"--trusted-keys {cluster.checkpoints.public_key} "
            f"--signing-key {cluster.checkpoints.private_key} "
            f"--etcd {cluster.etcd_url} --cluster {settings.cluster}"
            + ("" if cluster.tls_dir is None else f" --tls-dir {cluster.tls_dir}")
        )
        print("press Ctrl-C to stop every process")
        stop.wait()
    print("stopped")
    return 0


def _demo(settings: DemoSettings, args: argparse.Namespace) -> int:
    from service.bench import demo

    return demo.run(settings)


def _bench(settings: BenchSettings, args: argparse.Namespace) -> int:
    from service.bench import step_latency

    return step_latency.main(settings)


def _ckpt(settings: CkptSettings, args: argparse.Namespace) -> int:
    from service.cli import ckpt

    return ckpt.main(settings, args.action, args.version)


def _certs(settings: CertsSettings, args: argparse.Namespace) -> int:
    from service.cli import certs

    return certs.main(settings, args.action)


def _token(settings: TokenSettings, args: argparse.Namespace) -> int:
    from service.cli import token

    return token.main(settings, args.action)


def _chaos(settings: ChaosSettings, args: argparse.Namespace) -> int:
    from service.cli import chaos

    return chaos.main(settings, args.action)


def _status(settings: StatusSettings, args: argparse.Namespace) -> int:
    from service.cli import status

    return status.main(settings)


def _drain(settings: DrainSettings, args: argparse.Namespace) -> int:
    from service.cli import drain

    return drain.main(settings)


def _train(settings: TrainSettings, args: argparse.Namespace) -> int:
    from service.cli import train

    return train.main(settings)


def _plan(settings: PlanSettings, args: argparse.Namespace) -> int:
    from service.cli import plan

    return plan.main(settings)


def _export(settings: ExportSettings, args: argparse.Namespace) -> int:
    from service.cli import export

    return export.main(settings)


def _coordinator(settings: CoordinatorSettings, args: argparse.Namespace) -> int:
    from service.coordinator import coordinator_process

    coordinator_process.run(settings)
    return 0


def _shard(settings: ShardSettings, args: argparse.Namespace) -> int:
    from service.shard import shard_process

    shard_process.run(settings)
    return 0


# A handler gets the command's settings (validated) and the parsed arguments.
Handler = Callable[[Any, argparse.Namespace], int]

_COMMANDS: list[tuple[str, type[Settings], Handler, str]] = [
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
        "certs",
        CertsSettings,
        _certs,
        "Make certificates for mutual TLS: `certs dev` writes a throwaway CA and one per role.",
    ),
    (
        "token",
        TokenSettings,
        _token,
        "Bearer tokens of the identities file: add (prints a fresh token once, stores its "
        "SHA-256) or list.",
    ),
    (
        "chaos",
        ChaosSettings,
        _chaos,
        "Chaos suite: list the scenarios, or run one (a real cluster, robots, faults) and check the invariants.",
    ),
    (
        "status",
        StatusSettings,
        _status,
        "Show who leads each stage and who stands by, live from etcd, with health.",
    ),
    (
        "drain",
        DrainSettings,
        _drain,
        "Drain a coordinator (admin): no new sessions there, its robots moved to the others.",
    ),
    (
        "train",
        TrainSettings,
        _train,
        "Train the model, its exit heads and student on a reach task; write weights and a quality table.",
    ),
    (
        "plan",
        PlanSettings,
        _plan,
        "Choose stage boundaries and nodes from a node inventory: table, YAML, kustomize patches.",
    ),
    (
        "export",
        ExportSettings,
        _export,
        "Export the stages and the student of a weights directory as ONNX (float32 and int8) or TorchScript.",
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
    # Also after the command (`actionmesh ckpt list --log-level debug`), from
    # ACTIONMESH_LOG_LEVEL and from TOML: there it is the `log_level` setting of every command.
    parser.add_argument(
        "--log-level",
        dest="global_log_level",
        default=None,
        help="Python log level (default: INFO).",
    )
    parser.add_argument(
        "--log-format",
        dest="global_log_format",
        choices=("auto", "json", "text"),
        default=None,
        help="Log lines as JSON (one event per line) or text (default: auto, JSON unless "
        "stderr is a terminal).",
    )
    parser.add_argument("--die-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, settings_cls, handler, help_text in _COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == "ckpt":
            sub.add_argument("action", choices=CKPT_ACTIONS, help="What to do.")
            sub.add_argument(
                "version", nargs="?", default=None, help="A version id, where the action takes one."
            )
        if name == "certs":
            sub.add_argument("action", choices=CERTS_ACTIONS, help="What to make.")
        if name == "token":
            sub.add_argument("action", choices=TOKEN_ACTIONS, help="What to do.")
        if name == "chaos":
            sub.add_argument("action", choices=CHAOS_ACTIONS, help="list or run.")
        add_flags(sub, settings_cls)
        sub.set_defaults(handler=handler, settings_cls=settings_cls)
    return parser


def command_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """The parsed command's settings (file < env < flags); `--log-level` and `--log-format`
    count as flags before the command as after it, where they win."""
    if args.log_level is None:
        args = argparse.Namespace(**{**vars(args), "log_level": args.global_log_level})
    if args.log_format is None:
        args = argparse.Namespace(**{**vars(args), "log_format": args.global_log_format})
    settings: Settings = load(args.settings_cls, args.command, args, environ)
    return settings


def main(argv: list[str] | None = None) -> int:
    """Parse, load the command's settings, then run it; 2 (a usage error) on invalid settings."""
    args = build_parser().parse_args(argv)
    if args.die_with_parent is not None:
        die_with_parent(args.die_with_parent)
    try:
        settings = command_settings(args)
    except InvalidSettings as exc:
        print(exc, file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    handler: Handler = args.handler
    try:
        return handler(settings, args)
    except BrokenPipeError:  # `actionmesh ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
