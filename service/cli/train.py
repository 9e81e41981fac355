"""`actionmesh train`: train the model family and a GRU baseline, save the weights and the
quality table (the baseline's figures in it), optionally snapshot them as a checkpoint version
on local flash."""

from __future__ import annotations

import dataclasses
import getpass
import socket
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from checkpoint.errors import CheckpointError
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import load_private_key
from service.model import weights
from service.model.action_model import ActionModel
from service.model.config import ModelConfig
from service.runtime.command_settings import BenchSettings, TrainSettings
from service.training.baseline import train_baseline
from service.training.evaluate import JSON_FILE, PLOT_FILE, evaluate
from service.training.task import TaskConfig
from service.training.trainer import train


def model_config(settings: TrainSettings) -> ModelConfig:
    try:
        return ModelConfig(
            d_model=settings.d_model,
            n_heads=settings.n_heads,
            n_layers=settings.n_layers,
            tokens=settings.tokens,
            memory_tokens=settings.memory_tokens,
            n_stages=settings.stages,
            student_hidden=settings.student_hidden,
            seed=settings.seed,
            stage_boundaries=ModelConfig.boundaries_setting(settings.stage_boundaries),
        )
    except ValidationError as exc:
        raise SystemExit(f"actionmesh train: invalid model size: {exc}") from exc


def cluster_p50_ms(settings: TrainSettings, cfg: ModelConfig) -> dict[str, float]:
    """Each serve mode's p50 through a local cluster serving the weights just saved (what
    `bench --degraded` measures), so that the version carries its own latency factor."""
    from service.bench.degraded_modes import cluster_latencies  # starts processes: load late

    bench = BenchSettings(
        stages=cfg.n_stages,
        stage_boundaries=list(cfg.stage_boundaries or []),
        steps=settings.cluster_latency_steps,
        seed=settings.seed,
        port=0,
    )
    measured = cluster_latencies(bench, settings.output_dir)
    measured.setdefault("state_lost", measured["full"])  # FULL's path, with fresh state
    return measured


def _signing_key(settings: TrainSettings) -> Ed25519PrivateKey | None:
    """Checked before training, so that a missing key does not cost a training run."""
    if settings.signing_key is not None:
        return load_private_key(settings.signing_key)
    if not settings.insecure:
        raise SystemExit(
            "actionmesh train: --flash-dir needs --signing-key (see `actionmesh ckpt keygen`) "
            "or --insecure for an unsigned version"
        )
    return None


def main(settings: TrainSettings) -> int:
    cfg = model_config(settings)
    key = _signing_key(settings) if settings.flash_dir is not None else None
    task = TaskConfig(joints=cfg.joints, horizon=cfg.horizon, observation_dim=cfg.observation_dim)
    model = ActionModel(cfg)
    started = time.perf_counter()
    baseline = train_baseline(cfg, task, settings)
    baseline_done = time.perf_counter()
    train(model, task, settings, baseline)
    trained = time.perf_counter()
    info = weights.save(model, settings.output_dir)
    table = evaluate(
        model, task, settings.eval_episodes, settings.eval_seed, info.version, baseline
    )
    if settings.cluster_latency:
        table = dataclasses.replace(table, cluster_p50_ms=cluster_p50_ms(settings, cfg))
    table.save(settings.output_dir)
    print(table.format())
    print(
        f"trained {info.version} and the GRU baseline in {trained - started:.1f} s (baseline "
        f"{baseline_done - started:.1f} s; evaluation {time.perf_counter() - trained:.1f} s);"
        f" weights in {settings.output_dir}, quality table in "
        f"{settings.output_dir / JSON_FILE} and {settings.output_dir / PLOT_FILE}"
    )
    if settings.flash_dir is None:
        return 0
    # The flash verifies what it commits: trust the key that signs this version.
    trusted = [key.public_key()] if key is not None else []
    flash = LocalFlash(settings.flash_dir, trusted, insecure=settings.insecure)
    creator = f"{getpass.getuser()}@{socket.gethostname()}"
    try:
        manifest = flash.create(
            settings.output_dir, info.version, cfg.model_dump(), creator=creator, private_key=key
        )
    except CheckpointError as exc:
        print(f"actionmesh train: checkpoint: {exc}", file=sys.stderr)
        return 1
    signed = "signed" if manifest.signature else "unsigned"
    print(f"checkpoint version {manifest.version} ({signed}) on {settings.flash_dir}")
    return 0
