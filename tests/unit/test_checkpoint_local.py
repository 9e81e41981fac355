"""Checkpoints on local flash and a file:// blob store: manifests, signatures, verification,
quarantine, atomic pointers, conditional writes and gc. Real files, real fsync."""

from __future__ import annotations

import errno
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from checkpoint import gc
from checkpoint.blobstore import BlobStore, S3Options, attempt_timeouts, open_blobstore
from checkpoint.errors import (
    InvalidInput,
    NoSpace,
    NotFound,
    PreconditionFailed,
    VerificationFailed,
)
from checkpoint.local_flash import LocalFlash
from checkpoint.manifest import (
    MANIFEST_NAME,
    build_manifest,
    check_id,
    keygen,
    load_private_key,
    load_public_key,
    parse_manifest,
    sign,
    verify_signature,
)
from checkpoint.remote import Remote, ensure_local

CONFIG = {"d_model": 64, "n_stages": 2, "seed": 7}
FILES = ("stage-0.safetensors", "stage-1.safetensors", "student.safetensors")


def write_parts(directory: Path, seed: int, size: int = 4096) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(FILES):
        (directory / name).write_bytes(
            os.urandom(size) if seed < 0 else bytes([seed + index]) * size
        )
    return directory


def create(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, version: str, age_s: int
) -> None:
    source = write_parts(tmp_path / f"src-{version}", seed=age_s % 200)
    manifest = build_manifest(
        source,
        version,
        CONFIG,
        creator="test",
        parent=flash.current(),
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=age_s),
    )
    flash.add(source, sign(manifest, key))
    flash.set_current(version)


def test_keygen_writes_pem_files_that_sign_and_verify(tmp_path: Path) -> None:
    private_path, public_path = keygen(tmp_path / "keys")
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (private_path.stat().st_mode & 0o777) == 0o600
    manifest = build_manifest(write_parts(tmp_path / "src", 1), "v1", CONFIG, creator="me")
    signed = sign(manifest, load_private_key(private_path))
    assert verify_signature(signed, load_public_key(public_path))
    assert parse_manifest(signed.to_json()) == signed
    assert verify_signature(parse_manifest(signed.to_json()), load_public_key(public_path))
    assert not verify_signature(manifest, load_public_key(public_path))  # unsigned
    assert not verify_signature(signed, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(Exception, match="exists"):
        keygen(tmp_path / "keys")


def test_version_is_complete_and_current_moves(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    create(flash, tmp_path, key, "v1", 1)
    assert flash.current() == "v1"
    assert sorted(p.name for p in flash.path("v1").iterdir()) == sorted([*FILES, MANIFEST_NAME])
    create(flash, tmp_path, key, "v2", 2)
    loaded = flash.load_current()
    assert (loaded.version, loaded.from_current, loaded.manifest.parent) == ("v2", True, "v1")
    assert [p.name for p in flash.versions_dir.iterdir() if p.name.startswith(".")] == []
    assert not [p for p in flash.root.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-manifest", "tamper-manifest"])
def test_corruption_is_quarantined_and_previous_good_served(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, damage: str
) -> None:
    create(flash, tmp_path, key, "v1", 1)
    create(flash, tmp_path, key, "v2", 2)
    target = flash.path("v2")
    if damage == "flip":
        blob = bytearray((target / FILES[1]).read_bytes())
        blob[100] ^= 0x01
        (target / FILES[1]).write_bytes(bytes(blob))
    elif damage == "truncate":
        with open(target / FILES[0], "r+b") as handle:
            handle.truncate(10)
    elif damage == "no-manifest":
        (target / MANIFEST_NAME).unlink()
    else:
        doc = json.loads((target / MANIFEST_NAME).read_bytes())
        doc["config"]["seed"] = 8
        (target / MANIFEST_NAME).write_text(json.dumps(doc))

    loaded = flash.load_current()
    assert loaded.version == "v1" and not loaded.from_current
    (bad,) = loaded.quarantined
    assert bad.version == "v2" and not bad.ok and bad.problems
    assert bad.quarantined_to is not None and bad.quarantined_to.parent == flash.quarantine_dir
    assert flash.versions() == ["v1"]
    assert flash.current() == "v2"  # left for a pull of a good copy to repair


def test_signatures_refused_unless_trusted_or_insecure(tmp_path: Path) -> None:
    source = write_parts(tmp_path / "src", 3)
    unsigned = build_manifest(source, "v1", CONFIG, creator="test")
    other = sign(unsigned, Ed25519PrivateKey.generate())
    trusted = Ed25519PrivateKey.generate().public_key()

    strict = LocalFlash(tmp_path / "strict", [trusted])
    for manifest in (unsigned, other):
        with pytest.raises(VerificationFailed, match=r"unsigned|signature"):
            strict.add(source, manifest)
    assert strict.versions() == []

    lax = LocalFlash(tmp_path / "lax", [trusted], insecure=True)
    lax.add(source, unsigned)
    assert lax.verify("v1").ok
    # the same version, read by a node that does not accept unsigned versions: refused and
    # reported, but not moved (its bytes match its manifest; only the keys cannot vouch for it)
    result = LocalFlash(tmp_path / "lax", [trusted]).verify("v1")
    assert not result.ok and "unsigned" in result.problems[0]
    assert result.quarantined_to is None and not result.corrupt
    assert lax.versions() == ["v1"]


@pytest.mark.parametrize("keys", ["none", "other"])
def test_keys_that_cannot_vouch_report_but_never_quarantine(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, keys: str
) -> None:
    """An operator's missing or wrong --trusted-keys must not empty the flash cache: good,
    correctly signed versions are reported as not vouched for and left where they are."""
    create(flash, tmp_path, key, "v1", 1)
    create(flash, tmp_path, key, "v2", 2)
    wrong = [] if keys == "none" else [Ed25519PrivateKey.generate().public_key()]
    typo = LocalFlash(flash.root, wrong)
    for version in ("v1", "v2"):
        result = typo.verify(version)
        assert not result.ok and not result.corrupt and result.quarantined_to is None
        assert "does not verify with any trusted key" in result.problems[0]
    with pytest.raises(NotFound):
        typo.load_current()
    assert flash.versions() == ["v1", "v2"] and list(flash.quarantine_dir.iterdir()) == []
    assert flash.load_current().version == "v2"  # the right keys still serve it

    # Bytes that do not match the manifest are proven corrupt whatever the keys: quarantined.
    (flash.path("v1") / FILES[0]).write_bytes(b"rot")
    rotten = typo.verify("v1")
    assert rotten.corrupt and rotten.quarantined_to is not None
    assert flash.versions() == ["v2"]


def test_no_good_version_raises_not_found(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    create(flash, tmp_path, key, "v1", 1)
    (flash.path("v1") / FILES[2]).unlink()
    with pytest.raises(NotFound, match="pull one"):
        flash.load_current()


def test_rolled_back_current_falls_back_to_older_not_newer(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    for age, version in enumerate(("v1", "v2", "v3"), start=1):
        create(flash, tmp_path, key, version, age)
    flash.set_current("v2")  # operator rolled back from v3
    (flash.path("v2") / FILES[0]).write_bytes(b"garbage")
    assert flash.load_current().version == "v1"


def test_local_store_push_pull_round_trip_and_content_addressing(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    store = open_blobstore(f"file://{tmp_path / 'remote'}")
    remote = Remote(store)
    create(flash, tmp_path, key, "v1", 1)
    first = remote.push(flash, "v1")
    assert sorted(first.uploaded) == sorted(FILES) and first.skipped == ()
    # v2 changes only stage-1: the other two blobs are skipped
    source = tmp_path / "src-v2"
    write_parts(source, 1)
    (source / FILES[1]).write_bytes(b"new stage one")
    flash.add(source, sign(build_manifest(source, "v2", CONFIG, creator="t", parent="v1"), key))
    second = remote.push(flash, "v2")
    assert second.uploaded == (FILES[1],) and sorted(second.skipped) == sorted([FILES[0], FILES[2]])
    assert remote.versions() == ["v1", "v2"]

    other = LocalFlash(tmp_path / "other", [key.public_key()])
    remote.pull(other, "v2")
    for name in FILES:
        assert (other.path("v2") / name).read_bytes() == (flash.path("v2") / name).read_bytes()
    assert other.verify("v2").ok


def run_together(n: int, action: object) -> tuple[list[object], list[Exception]]:
    barrier = threading.Barrier(n)
    wins: list[object] = []
    losses: list[Exception] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        barrier.wait()
        try:
            result = action(i)  # type: ignore[operator]
        except PreconditionFailed as exc:
            with lock:
                losses.append(exc)
        else:
            with lock:
                wins.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return wins, losses


def test_local_conditional_put_exactly_one_wins(tmp_path: Path) -> None:
    store: BlobStore = open_blobstore(f"file://{tmp_path / 'store'}")
    wins, losses = run_together(8, lambda i: store.put_if("CURRENT", b"%d" % i, if_none_match=True))
    assert (len(wins), len(losses)) == (1, 7)
    etag = store.get("CURRENT").etag  # type: ignore[union-attr]
    wins, losses = run_together(8, lambda i: store.put_if("CURRENT", b"x%d" % i, if_match=etag))
    assert (len(wins), len(losses)) == (1, 7)
    assert "changed since it was read" in str(losses[0])


def test_gc_keeps_newest_and_pinned(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    for age in range(1, 7):
        create(flash, tmp_path, key, f"v{age}", age)
    flash.set_current("v2")
    decided = gc.collect_local(flash, keep_newest=2, in_use=["v4"], remote_current="v1")
    assert decided.keep == ("v1", "v2", "v4", "v5", "v6")
    assert decided.delete == ("v3",)
    assert flash.versions() == ["v1", "v2", "v4", "v5", "v6"]
    assert flash.load_current().version == "v2"
    assert gc.plan({"a": datetime(2026, 1, 1, tzinfo=UTC)}, 1, ["zzz"]).keep == ("a",)
    with pytest.raises(ValueError):
        gc.plan({}, 0, [])


def test_pull_reuses_local_parts_and_ensure_local_repairs(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    remote = Remote(open_blobstore(f"file://{tmp_path / 'remote'}"))
    create(flash, tmp_path, key, "v1", 1)
    source = write_parts(tmp_path / "src-v2", 1)
    (source / FILES[1]).write_bytes(b"changed")
    flash.add(source, sign(build_manifest(source, "v2", CONFIG, creator="t", parent="v1"), key))
    for version in ("v1", "v2"):
        remote.push(flash, version)
    remote.promote("v2")

    node = LocalFlash(tmp_path / "node", [key.public_key()])
    with pytest.raises(NotFound):
        ensure_local(node, None, "v1")
    first = ensure_local(node, remote, "v1")
    assert (first.version, node.current()) == ("v1", "v1")
    pulled = remote.pull(node, "v2")
    assert pulled.downloaded == (FILES[1],) and sorted(pulled.reused) == [FILES[0], FILES[2]]

    (node.path("v2") / FILES[0]).write_bytes(b"rot")
    loaded = ensure_local(node, remote)  # remote CURRENT = v2: quarantined, pulled again
    assert loaded.version == "v2" and node.current() == "v2"
    assert [r.version for r in loaded.quarantined] == ["v2"]
    assert node.check("v2").ok


def test_a_reader_refuses_a_directory_that_is_not_a_flash(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no versions/"):
        LocalFlash(tmp_path / "typo", create=False)
    assert not (tmp_path / "typo").exists()
    LocalFlash(tmp_path / "flash")  # a writer creates it; then a reader opens it
    assert LocalFlash(tmp_path / "flash", create=False).versions() == []


@pytest.mark.parametrize(
    "current",
    [
        b"not json {",
        b"",
        b'["v1"]',
        b'{"version": "../../etc"}',
        b'{"version": 7}',
        b'{"version": "v1", "previous": "a/b"}',
        b'{"previous": "v1"}',
    ],
)
def test_a_malformed_remote_current_is_refused_and_a_node_serves_its_flash(
    flash: LocalFlash,
    tmp_path: Path,
    key: Ed25519PrivateKey,
    current: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote = Remote(open_blobstore(f"file://{tmp_path / 'remote'}"))
    create(flash, tmp_path, key, "v1", 1)
    remote.push(flash, "v1")
    remote.store.put_bytes("CURRENT", current)
    with pytest.raises(VerificationFailed, match="remote CURRENT is malformed"):
        remote.current()
    loaded = ensure_local(flash, remote)
    assert loaded.version == "v1"
    assert "remote CURRENT is malformed" in caplog.text
    assert "serving the newest good local version" in caplog.text
    # The operator repairs it by promoting a version: CURRENT is overwritten.
    assert remote.promote("v1").version == "v1" and remote.current() == "v1"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("ftp://host/x", "unsupported"),
        ("file://otherhost/x", "file:///absolute/path"),
        ("file:relative/x", "file:///absolute/path"),
        ("s3://bucket/p?colour=red", "unknown S3 URL parameters"),
        ("s3://bucket/p?endpoint_url=notaurl", "endpoint_url"),
        ("s3://bucket/p?endpoint_url=http://host:port", "endpoint_url"),
        ("s3://Bad_Bucket/p", "bucket name"),
        ("s3://ab/p", "bucket name"),
        ("s3://a..b/p", "bucket name"),
        ("s3://" + "b" * 64 + "/p", "bucket name"),
    ],
)
def test_a_url_that_cannot_name_a_store_is_invalid_input(url: str, says: str) -> None:
    """Refused before any S3 client exists (so no socket is opened here)."""
    with pytest.raises(InvalidInput, match=says):
        open_blobstore(url)


def test_bad_ids_keys_and_blob_keys_are_invalid_input_quoted_briefly(tmp_path: Path) -> None:
    for bad in ("../x", "a/b", "..", "", "v" * 20_000):
        with pytest.raises(InvalidInput, match="invalid version id") as caught:
            check_id(bad)
        assert len(str(caught.value)) < 200
    store = open_blobstore(f"file://{tmp_path / 'store'}")
    with pytest.raises(InvalidInput, match="invalid blob key"):
        store.exists("../escape")

    private, public = keygen(tmp_path / "keys")
    (tmp_path / "garbage").write_bytes(b"garbage")
    (tmp_path / "empty").write_bytes(b"")
    cases = [
        (load_public_key, private, "is a private key"),
        (load_private_key, public, "is a public key"),
        (load_public_key, tmp_path / "garbage", "not a PEM public key"),
        (load_private_key, tmp_path / "garbage", "not a PEM private key"),
        (load_public_key, tmp_path / "empty", "is empty"),
        (load_private_key, tmp_path / "nowhere", "cannot read"),
        (load_public_key, tmp_path, "cannot read"),  # a directory
    ]
    for load, path, says in cases:
        with pytest.raises(InvalidInput, match=says):
            load(path)


@pytest.mark.parametrize("deadline_s", [1.5, 10.0, 60.0])
def test_attempt_timeouts_add_up_to_the_deadline(deadline_s: float) -> None:
    options = S3Options(deadline_s=deadline_s)
    connect, read = attempt_timeouts(options)
    waits = (options.max_attempts - 1) * options.retry_max_wait_s
    assert 0 < connect <= read
    assert options.max_attempts * (connect + read) + waits == pytest.approx(deadline_s)


def test_the_deadline_is_a_url_parameter_and_too_short_a_deadline_is_refused() -> None:
    for bad, says in (("0.2", "leaves no time"), ("-1", "leaves no time"), ("soon", "number")):
        with pytest.raises(InvalidInput, match=says):
            open_blobstore(f"s3://bucket/p?deadline_s={bad}&endpoint_url=http://127.0.0.1:1")
    with pytest.raises(InvalidInput, match="leaves no time"):
        attempt_timeouts(S3Options(deadline_s=float("inf")))


def test_stray_names_on_flash_or_remote_do_not_break_readers(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """A local CURRENT that names no valid id, and directories or keys whose names are not
    version ids, are ignored (and logged), not fatal to every reader."""
    create(flash, tmp_path, key, "v1", 1)
    (flash.versions_dir / "not a version").mkdir()
    (flash.root / "CURRENT").write_text("../../etc\n")
    assert flash.versions() == ["v1"]
    assert flash.current() is None
    assert flash.load_current().version == "v1"
    remote = Remote(open_blobstore(f"file://{tmp_path / 'remote'}"))
    remote.push(flash, "v1")
    remote.store.put_bytes("versions/not a version/manifest.json", b"{}")
    assert remote.versions() == ["v1"]
    assert gc.collect_remote(remote, keep_newest=1, dry_run=True).keep == ("v1",)


def statvfs_with_free(free_bytes: int, block: int = 4096) -> os.statvfs_result:
    """A file system of 4 KiB blocks with `free_bytes` (rounded down) available."""
    free = free_bytes // block
    return os.statvfs_result((block, block, 10**6, free, free, 10**6, 10**6, 10**6, 0, 255))


def test_a_flash_without_room_refuses_a_pull_before_downloading_anything(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_blobstore(f"file://{tmp_path / 'remote'}")
    remote = Remote(store)
    create(flash, tmp_path, key, "v1", 1)
    remote.push(flash, "v1")
    node = LocalFlash(tmp_path / "node", [key.public_key()])
    downloads: list[str] = []
    monkeypatch.setattr(store, "get_file", lambda k, p: downloads.append(k))
    # Three 4 KiB parts and the manifest need four blocks: three are free.
    monkeypatch.setattr(os, "statvfs", lambda path: statvfs_with_free(3 * 4096))
    with pytest.raises(NoSpace, match=f"no space on local flash {node.root} for version=v1"):
        ensure_local(node, remote, "v1")
    assert (downloads, node.versions(), node.current()) == ([], [], None)
    assert list(node.versions_dir.iterdir()) == []


def test_a_disk_that_fills_up_during_a_pull_leaves_nothing_and_raises_no_space(
    flash: LocalFlash, tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_blobstore(f"file://{tmp_path / 'remote'}")
    remote = Remote(store)
    create(flash, tmp_path, key, "v1", 1)
    remote.push(flash, "v1")
    node = LocalFlash(tmp_path / "node", [key.public_key()])

    def fills_up(_key: str, path: Path) -> None:
        path.write_bytes(b"half a part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store, "get_file", fills_up)
    with pytest.raises(NoSpace, match=f"no space left on local flash {node.root}") as caught:
        remote.pull(node, "v1")
    assert isinstance(caught.value.__cause__, OSError)
    assert list(node.versions_dir.iterdir()) == []  # the temp dir and its half part are gone


def test_other_write_errors_stay_what_they_are(flash: LocalFlash) -> None:
    with pytest.raises(PermissionError), flash.incoming("v1"):
        raise PermissionError(errno.EACCES, "denied")
    assert list(flash.versions_dir.iterdir()) == []
