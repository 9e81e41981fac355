"""`actionmesh ckpt ACTION`: versioned weight snapshots on this node's flash and the remote store.

Exit codes scripts can trust: 0 done; 1 a version failed verification or was not found;
3 a conditional write lost (someone else promoted: re-read and decide again); 4 the remote
store (or, for promote and rollback with --etcd, the cluster's etcd) could not be reached. `--json` prints one object per run.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkpoint import gc
from checkpoint.blobstore import open_blobstore
from checkpoint.errors import (
    CheckpointError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StoreUnavailable,
    VerificationFailed,
)
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import Manifest, keygen, load_private_key, load_public_key
from checkpoint.remote import Remote
from service.model.weights_files import read_info
from service.runtime.command_settings import CkptSettings
from service.runtime.tls import etcd_tls
from state.desired_version import set_desired_version
from state.leadership import LeadershipUnavailable

log = logging.getLogger(__name__)

# Everything else (bad input, a refused request, an OSError on a path given by a flag) is 1.
_EXIT = {NotFound: 1, VerificationFailed: 1, PreconditionFailed: 3, StoreUnavailable: 4}


def open_flash(settings: CkptSettings, *, create: bool = False) -> LocalFlash:
    """This node's flash. Only the verbs that put versions on it (create, pull) and those that
    move pointers or delete (promote, rollback, gc) may create it; the others (list, show,
    verify, push) refuse a directory that is not a flash: a mistyped --flash-dir."""
    keys = [load_public_key(path) for path in settings.trusted_keys]
    try:
        return LocalFlash(settings.flash_dir, keys, insecure=settings.insecure, create=create)
    except NotFound as exc:
        raise NotFound(f"{exc}: check --flash-dir (read-only commands do not create it)") from exc


def open_remote(settings: CkptSettings) -> Remote:
    if not settings.remote:
        raise NotFound(
            "no remote store configured: pass --remote s3://bucket/prefix or file:///path"
        )
    return Remote(open_blobstore(settings.remote), grace_s=settings.grace_s)


def _progress(action: str) -> Callable[[str, int], None]:
    def report(name: str, size: int) -> None:
        print(f"{action} {name} {size / 1e6:8.2f} MB", file=sys.stderr, flush=True)

    return report


def _summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "version": manifest.version,
        "parent": manifest.parent,
        "created_at": manifest.created_at.isoformat(),
        "creator": manifest.creator,
        "signed": manifest.signature is not None,
        "size_bytes": manifest.total_size,
        "files": {
            n: {"sha256": e.sha256, "size": e.size} for n, e in sorted(manifest.files.items())
        },
    }


def _weights_source(settings: CkptSettings, scratch: Path) -> Path:
    """A weights dir to snapshot: --weights-dir, or fresh weights from --stages/--seed."""
    if settings.weights_dir is not None:
        return settings.weights_dir
    # torch only here: every other action (list, show, promote...) starts without it.
    from pydantic import ValidationError

    from service.model import weights
    from service.model.action_model import ActionModel
    from service.model.config import ModelConfig

    try:
        cfg = ModelConfig(
            n_stages=settings.stages,
            seed=settings.seed,
            stage_boundaries=ModelConfig.boundaries_setting(settings.stage_boundaries),
        )
    except ValidationError as exc:
        raise SystemExit(f"actionmesh ckpt create: invalid model: {exc}") from exc
    weights.save(ActionModel(cfg), scratch)
    return scratch


def create(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings, create=True)
    key = load_private_key(settings.signing_key) if settings.signing_key else None
    if key is None and not settings.insecure:
        raise VerificationFailed(
            "pass --signing-key (see `ckpt keygen`) or --insecure for an unsigned version"
        )
    with tempfile.TemporaryDirectory(prefix="actionmesh-ckpt-") as scratch:
        source = _weights_source(settings, Path(scratch))
        try:
            info = read_info(source)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(
                f"{source} is not a weights directory (its model.json: {exc})"
            ) from exc
        if version is not None and version != info.version:
            raise VerificationFailed(f"these weights are version {info.version}, not {version}")
        creator = f"{getpass.getuser()}@{socket.gethostname()}"
        manifest = flash.create(
            source, info.version, info.config.model_dump(), creator=creator, private_key=key
        )
    result: dict[str, Any] = {"created": _summary(manifest)}
    if settings.remote:
        pushed = open_remote(settings).push(flash, manifest.version, _progress("upload"))
        result["pushed"] = {"uploaded": list(pushed.uploaded), "skipped": list(pushed.skipped)}
    return result


def list_versions(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings)
    result: dict[str, Any] = {"local": flash.versions(), "local_current": flash.current()}
    if settings.remote:
        remote = open_remote(settings)
        result |= {"remote": remote.versions(), "remote_current": remote.current()}
    return result


def show(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    if version is None:
        raise NotFound("show needs a VERSION (see `ckpt list`)")
    flash = open_flash(settings)
    if flash.path(version).is_dir():
        return _summary(flash.manifest(version))
    return _summary(open_remote(settings).manifest(version))


def verify(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings)
    if version is not None and not flash.path(version).is_dir():
        raise NotFound(f"version={version} not found on local flash {flash.root}")
    results = [flash.verify(v) for v in ([version] if version else flash.versions())]
    report = {
        r.version: {
            "ok": r.ok,
            "problems": list(r.problems),
            "quarantined_to": str(r.quarantined_to) if r.quarantined_to else None,
        }
        for r in results
    }
    corrupt = [r.version for r in results if r.quarantined_to is not None]
    unvouched = [r.version for r in results if not r.ok and r.quarantined_to is None]
    if corrupt or unvouched:
        found = [f"corrupt, quarantined: {corrupt}"] if corrupt else []
        if unvouched:
            keys = ", ".join(str(p) for p in settings.trusted_keys) or "none given"
            found.append(
                f"not vouched for by the trusted keys ({keys}), left in place: {unvouched}"
            )
        raise VerificationFailed("failed verification: " + "; ".join(found), report)
    return {"verified": report}


def push(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings)
    target = version or flash.current()
    if target is None:
        raise NotFound("push needs a VERSION (local CURRENT is unset)")
    pushed = open_remote(settings).push(flash, target, _progress("upload"))
    return {
        "version": target,
        "uploaded": list(pushed.uploaded),
        "skipped": list(pushed.skipped),
        "bytes_uploaded": pushed.bytes_uploaded,
    }


def pull(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    remote = open_remote(settings)
    target = version or remote.current()
    if target is None:
        raise NotFound("pull needs a VERSION (remote CURRENT is unset)")
    pulled = remote.pull(open_flash(settings, create=True), target, _progress("download"))
    return {
        "pulled": _summary(pulled.manifest),
        "downloaded": list(pulled.downloaded),
        "reused": list(pulled.reused),
    }


def _tell_cluster(settings: CkptSettings, version: str) -> bool:
    """Set the running cluster's desired version (with --etcd), so that it rolls over now."""
    if not settings.etcd:
        return False
    try:
        set_desired_version(
            settings.etcd, settings.cluster, version, tls=etcd_tls(settings.tls_dir, "admin")
        )
    except LeadershipUnavailable as exc:
        raise StoreUnavailable(
            f"CURRENT names {version}, but the running cluster was not told: {exc}; "
            "run the same command again"
        ) from exc
    return True


def promote(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    if version is None:
        raise NotFound("promote needs a VERSION (see `ckpt list`)")
    flash = open_flash(settings, create=True)
    pointer = open_remote(settings).promote(version) if settings.remote else None
    if flash.path(version).is_dir():
        flash.set_current(version)
    return {
        "current": version,
        "previous": pointer.previous if pointer else None,
        "remote": pointer is not None,
        "local": flash.current() == version,
        "cluster": _tell_cluster(settings, version),
    }


def rollback(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings, create=True)
    if settings.remote:
        pointer = open_remote(settings).rollback()
        target, previous = pointer.version, pointer.previous
    else:
        previous = flash.current()
        if previous is None:
            raise NotFound("local CURRENT is unset: nothing to roll back")
        parent = flash.manifest(previous).parent
        if parent is None:
            raise NotFound(f"CURRENT={previous} has no parent version")
        target = parent
    if flash.path(target).is_dir():
        flash.set_current(target)
    return {"current": target, "previous": previous, "cluster": _tell_cluster(settings, target)}


def collect(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    flash = open_flash(settings, create=True)
    remote = open_remote(settings) if settings.remote else None
    local = gc.collect_local(
        flash, settings.keep, remote_current=remote.current() if remote else None
    )
    result: dict[str, Any] = {"local": {"kept": list(local.keep), "deleted": list(local.delete)}}
    if remote is not None:
        done = gc.collect_remote(remote, settings.keep, grace_s=settings.grace_s)
        result["remote"] = {"kept": list(done.keep), "deleted": list(done.delete)}
    return result


def make_keys(settings: CkptSettings, version: str | None) -> dict[str, Any]:
    private, public = keygen(settings.key_dir)
    return {"private_key": str(private), "public_key": str(public)}


_ACTIONS: dict[str, Callable[[CkptSettings, str | None], dict[str, Any]]] = {
    "keygen": make_keys,
    "create": create,
    "list": list_versions,
    "show": show,
    "verify": verify,
    "push": push,
    "pull": pull,
    "promote": promote,
    "rollback": rollback,
    "gc": collect,
}


def main(settings: CkptSettings, action: str, version: str | None) -> int:
    """Run `action`; every failure is one line (on stderr, or one JSON object on stdout with
    --json) and an exit code from _EXIT, never a traceback."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # "Found credentials in ..."
        for noisy in ("boto3", "botocore", "s3transfer", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = _ACTIONS[action](settings, version)
    except Exception as exc:
        code = next((c for kind, c in _EXIT.items() if isinstance(exc, kind)), 1)
        message = str(exc.args[0]) if isinstance(exc, CheckpointError) and exc.args else str(exc)
        if not isinstance(exc, CheckpointError | OSError):  # OSError: a path named by a flag
            log.debug("ckpt %s failed", action, exc_info=True)
            message = f"unexpected {type(exc).__name__}: {message} (--log-level debug shows where)"
        message = " ".join(message.split()) or type(exc).__name__
        details = exc.args[1] if isinstance(exc, CheckpointError) and len(exc.args) > 1 else None
        if settings.json_output:
            print(json.dumps({"error": message, "kind": type(exc).__name__, "details": details}))
        else:
            print(f"actionmesh ckpt {action}: {message}", file=sys.stderr)
        return code
    print(json.dumps(result) if settings.json_output else _text(result))
    return 0


def _text(result: dict[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", _text(value, indent + "  ")]
        else:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)
