"""The TLS settings (one folder turns it on: flag, env or TOML; the rules between flags) and
the server credentials' reloading, without a socket."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from service.cli.main import build_parser, command_settings, main
from service.local.dev_certs import Authority, issue, write_dev_certs, write_role
from service.runtime.settings import CoordinatorSettings, ShardSettings
from service.runtime.tls import TlsFiles, _ReloadingConfig, etcd_tls, server_credentials


def settings_of(argv: list[str], environ: dict[str, str]) -> object:
    args: argparse.Namespace = build_parser().parse_args(argv)
    return command_settings(args, environ)


def test_tls_dir_from_flag_env_or_file(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text(f'[shard]\ntls_dir = "{tmp_path / "from-file"}"\n')
    got = settings_of(["shard", "--config", str(toml)], {})
    assert isinstance(got, ShardSettings) and got.tls_dir == tmp_path / "from-file"
    got = settings_of(["coordinator"], {"ACTIONMESH_TLS_DIR": "/from/env"})
    assert isinstance(got, CoordinatorSettings) and got.tls_dir == Path("/from/env")
    got = settings_of(["coordinator", "--tls-dir", "/flag"], {"ACTIONMESH_TLS_DIR": "/env"})
    assert isinstance(got, CoordinatorSettings) and got.tls_dir == Path("/flag")
    assert CoordinatorSettings().tls_dir is None  # plaintext unless asked


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["up", "--tls-dir", "/x"], "--tls"),
        (["bench", "--tls", "--failover"], "--failover"),
        (["bench", "--tls", "--pinned"], "--pinned"),
        (["bench", "--floors", "--scale"], "--scale"),
    ],
)
def test_tls_rules_are_one_line_usage_errors(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and named in err[0], err


def test_a_missing_certificate_is_one_clear_start_up_error(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, roles=["coordinator"])
    with pytest.raises(SystemExit, match=r"shard\.pem"):
        server_credentials(tmp_path, "shard")
    with pytest.raises(SystemExit, match=r"admin\.pem"):
        etcd_tls(tmp_path, "admin")
    assert etcd_tls(None, "admin") is None


def test_the_fetcher_answers_only_when_the_files_change(tmp_path: Path) -> None:
    write_dev_certs(tmp_path, roles=["coordinator"])
    fetch = _ReloadingConfig(TlsFiles.of_role(tmp_path, "coordinator"))
    assert fetch() is None and fetch() is None  # unchanged: keep the current configuration
    write_role(tmp_path, "coordinator", *issue(Authority.load(tmp_path), "coordinator"))
    assert fetch() is not None  # replaced: a new configuration, once
    assert fetch() is None


def test_the_fetcher_keeps_the_current_certificate_while_a_file_is_missing(
    tmp_path: Path,
) -> None:
    write_dev_certs(tmp_path, roles=["shard"])
    files = TlsFiles.of_role(tmp_path, "shard")
    fetch = _ReloadingConfig(files)
    key = files.key.read_bytes()
    os.remove(files.key)
    assert fetch() is None
    files.key.write_bytes(key)
    os.utime(files.key, ns=(1, 1))  # a stamp unlike the first
    assert fetch() is not None
