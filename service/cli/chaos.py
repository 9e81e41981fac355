"""`actionmesh chaos list|run`: the chaos suite's scenarios, and one run of one of them against
a real local cluster, with its report and a non-zero exit when an invariant fails.

A partition scenario makes its hosts (network namespaces joined by a bridge) and runs the
same command again inside host `main`, told the hosts through HOSTS_ENV: every thread and
child of that run lives in the namespaces, none can reach any other address. Where the
machine allows no namespaces or nftables, it exits EXIT_UNAVAILABLE saying why."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from chaos.schedule import PARTITIONS, describe, scenario_names
from service.runtime.command_settings import ChaosSettings

EXIT_FAILED_INVARIANT = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3  # the scenario cannot run on this machine (the message says why)
# Set in the run started inside the hosts: their names, namespaces and addresses (JSON).
HOSTS_ENV = "ACTIONMESH_CHAOS_HOSTS"


def main(settings: ChaosSettings, action: str) -> int:
    if action == "list":
        return _list(settings)
    return _run(settings)


def _list(settings: ChaosSettings) -> int:
    scenarios = [{"name": n, "description": describe(n)} for n in scenario_names()]
    if settings.json_output:
        print(json.dumps({"scenarios": scenarios}))
    else:
        width = max(len(s["name"]) for s in scenarios)
        for s in scenarios:
            print(f"{s['name']:<{width}}  {s['description']}")
    return 0


def _run(settings: ChaosSettings) -> int:
    if settings.scenario is None or settings.scenario not in scenario_names():
        given = (
            "no --scenario"
            if settings.scenario is None
            else f"unknown scenario {settings.scenario!r}"
        )
        print(
            f"actionmesh chaos run: {given}; choose one of {', '.join(scenario_names())}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if importlib.util.find_spec("moto") is None:
        print(
            "actionmesh chaos run: the cluster's S3 endpoint needs moto: "
            "pip install 'actionmesh[chaos]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if settings.scenario in PARTITIONS and HOSTS_ENV not in os.environ:
        return _run_on_hosts(settings)
    # torch, the cluster tooling and matplotlib only now: `chaos list` and --help stay quick.
    from chaos import report, runner, verdicts
    from chaos.hosts import SMALL_MODEL
    from service.local.netns import HostMap
    from service.model.config import ModelConfig

    model = (
        SMALL_MODEL
        if settings.model_size == "small"
        else ModelConfig(n_stages=SMALL_MODEL.n_stages)
    )
    options = runner.RunOptions(
        scenario=settings.scenario,
        duration_s=settings.duration,
        seed=settings.seed,
        robots=settings.robots,
        rate_hz=settings.rate_hz,
        every_s=settings.every_s,
        step_timeout_s=settings.step_timeout_s,
        wait_replicas=settings.wait_replicas,
        replicas=settings.replicas,
        coordinators=settings.coordinators,
        lease_ttl_s=settings.lease_ttl_s,
        redis_durability=settings.redis_durability,
        model=model,
        work_dir=settings.work_dir,
        start_timeout_s=settings.start_timeout_s,
        progress=not settings.json_output and sys.stderr.isatty(),
        hosts=HostMap.from_json(os.environ[HOSTS_ENV]) if HOSTS_ENV in os.environ else None,
    )
    directory = settings.report or Path(f"chaos-report-{settings.scenario}-{settings.seed}")
    record = runner.run(options)
    result = report.write(record, verdicts.check(record), directory)
    print(json.dumps(result) if settings.json_output else report.table(result))
    return 0 if result["ok"] else EXIT_FAILED_INVARIANT


def _run_on_hosts(settings: ChaosSettings) -> int:
    """Make the hosts, run this very command inside host `main`, delete the hosts."""
    from chaos.hosts import MAIN, SMALL_MODEL, host_names
    from service.local import netns, nft

    why = nft.unavailable()
    if why is not None:
        print(
            f"actionmesh chaos run: {settings.scenario} needs network namespaces and nftables, "
            f"which this machine does not allow: {why}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    # Both model sizes have SMALL_MODEL's stages (see _run).
    names = host_names(SMALL_MODEL.n_stages, settings.replicas, settings.coordinators)
    with netns.Hosts(names) as hosts:
        inner = [sys.executable, "-m", "service.cli", *sys.argv[1:]]
        env = {**os.environ, HOSTS_ENV: hosts.map.to_json()}
        return subprocess.run(hosts.run_in(MAIN, inner), env=env, check=False).returncode
