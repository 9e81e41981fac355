"""Per model version, what the coordinator runs itself: the distilled student (FALLBACK) and
the offline quality table the degrade policy judges by. Loaded once per version, verified
through the checkpoint module like a shard's weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fallback.policy import PolicyConfig
from service.model import weights
from service.model.student import Student
from service.runtime.settings import CoordinatorSettings

log = logging.getLogger(__name__)

RETRY_S = 10.0  # before trying again to load a version's assets that failed to load
UNMEASURED_LATENCY_FACTOR = 3.0  # a cluster step costs about 2-3x the in-process one


def latency_factor(settings: CoordinatorSettings, table: dict[str, Any]) -> float:
    """--policy-latency-factor if given, else the version's own (measured through a cluster
    when it was trained: quality.json's latency_factor), else a guess."""
    if settings.policy_latency_factor is not None:
        return settings.policy_latency_factor
    measured = table.get("latency_factor")
    if isinstance(measured, int | float) and measured > 0:
        # A cluster step does all an in-process one does and more: a ratio below 1 is an
        # in-process figure measured on a busy machine, not a faster cluster.
        return max(float(measured), 1.0)
    return UNMEASURED_LATENCY_FACTOR


@dataclass(frozen=True)
class VersionAssets:
    student: Student | None  # None: no weights source configured, or they failed to load
    policy: PolicyConfig | None  # None: the version ships no quality table (never trained)


NONE = VersionAssets(None, None)


class ModelAssets:
    """Assets are loaded in the background as versions appear (`prefetch`); a step reads what
    is loaded (`loaded`) and never waits for a load."""

    def __init__(
        self,
        settings: CoordinatorSettings | None,
        preloaded: dict[str, VersionAssets] | None = None,
    ) -> None:
        self.settings = settings  # None: nothing to load beyond `preloaded`
        self._loaded: dict[str, VersionAssets] = dict(preloaded or {})
        self._failed: dict[str, float] = {}
        self._loading: dict[str, threading.Lock] = {}  # one per version: others do not wait
        self._lock = threading.Lock()

    @classmethod
    def preloaded(cls, assets: dict[str, VersionAssets]) -> ModelAssets:
        return cls(None, assets)

    def loaded(self, version: str) -> VersionAssets:
        """The assets of `version` if loaded, else none (and a background load is started)."""
        with self._lock:
            assets = self._loaded.get(version)
        if assets is None:
            self.prefetch({version})
            return NONE
        return assets

    def get(self, version: str) -> VersionAssets:
        """The assets of `version`, loaded now if they are not (off the step path only)."""
        with self._lock:
            if version in self._loaded:
                return self._loaded[version]
            if time.monotonic() < self._failed.get(version, 0.0):
                return NONE
            loading = self._loading.setdefault(version, threading.Lock())
        with loading:
            with self._lock:
                if version in self._loaded:
                    return self._loaded[version]
            try:
                assets = self._load(version)
            except Exception as exc:  # a missing or bad version: serve without FALLBACK
                with self._lock:
                    self._failed[version] = time.monotonic() + RETRY_S
                log.error("model=%s: no student or quality table for FALLBACK: %s", version, exc)
                return NONE
            with self._lock:
                self._loaded[version] = assets
            return assets

    def prefetch(self, versions: set[str]) -> None:
        """Load, in the background, the assets of versions not loaded yet."""
        now = time.monotonic()
        with self._lock:
            waiting = {v for v, until in self._failed.items() if now < until}
            busy = {v for v, lock in self._loading.items() if lock.locked()}
            new = versions - self._loaded.keys() - busy - waiting  # a failed load is retried
        for version in new:
            threading.Thread(
                target=self.get, args=(version,), name=f"assets-{version}", daemon=True
            ).start()

    @staticmethod
    def _directory(settings: CoordinatorSettings, version: str) -> Path | None:
        if settings.flash_dir is not None:
            from service.runtime.checkpoint_source import version_weights

            return version_weights(settings, settings.flash_dir, version)
        source = settings.weights_dir
        if source is not None and weights.read_info(source).version == version:
            return source
        return None

    def _load(self, version: str) -> VersionAssets:
        settings = self.settings
        directory = self._directory(settings, version) if settings is not None else None
        if settings is None or directory is None:
            log.warning("model=%s: no --weights-dir or --flash-dir holds it: no FALLBACK", version)
            return NONE
        student, info = weights.load_student(directory)
        quality_file = directory / weights.QUALITY_FILE
        policy = None
        if quality_file.is_file():
            table = json.loads(quality_file.read_text())
            policy = dataclasses.replace(
                PolicyConfig.from_quality_table(table),
                early_exit_max_error_ratio=settings.early_exit_max_error_ratio,
                fallback_max_error_ratio=settings.fallback_max_error_ratio,
                latency_factor=latency_factor(settings, table),
            )
            if policy.quality.n_stages != info.config.n_stages:  # the planner could not use it
                log.error(
                    "model=%s: quality.json is for %d stages, the model has %d: ignored",
                    version,
                    policy.quality.n_stages,
                    info.config.n_stages,
                )
                policy = None
        log.info(
            "model=%s: student loaded for FALLBACK; quality table %s",
            version,
            "loaded" if policy else "absent (untrained weights: degraded answers say confidence 0)",
        )
        return VersionAssets(student, policy)
