"""Settings: config file < env vars < flags, validation messages, and the --help of every command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from service.cli.main import build_parser, main
from service.runtime.settings import (
    BenchSettings,
    ClusterSettings,
    CoordinatorSettings,
    DemoSettings,
    Settings,
    ShardSettings,
    load,
)

pytestmark = pytest.mark.timeout(30)

COMMANDS: dict[str, type[Settings]] = {
    "up": ClusterSettings,
    "demo": DemoSettings,
    "bench": BenchSettings,
    "coordinator": CoordinatorSettings,
    "shard": ShardSettings,
}
NO_ENV: dict[str, str] = {}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "actionmesh.toml"
    path.write_text(text)
    return path


def load_error(
    cls: type[Settings], section: str, args: argparse.Namespace, environ: dict[str, str]
) -> str:
    with pytest.raises(SystemExit) as caught:
        load(cls, section, args, environ=environ)
    assert isinstance(caught.value.code, str), caught.value.code  # a message, not a bare status
    return caught.value.code


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def squeeze(text: str) -> str:
    """Text without whitespace: argparse re-wraps help to the terminal width."""
    return "".join(text.split())


# --- precedence ---------------------------------------------------------------------------


def test_defaults_without_file_env_or_flags() -> None:
    settings = load(CoordinatorSettings, "coordinator", parse("coordinator"), NO_ENV)
    assert settings == CoordinatorSettings()


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [coordinator]
        port = 1001
        batch_max_size = 3
        session_ttl_s = 5.5
        stage_addresses = ["file:1", "file:2"]

        [shard]
        port = 2001
        """,
    )
    environ = {"ACTIONMESH_PORT": "1002", "ACTIONMESH_BATCH_MAX_SIZE": "4"}
    args = parse("coordinator", "--config", str(path), "--port", "1003")

    settings = load(CoordinatorSettings, "coordinator", args, environ)

    assert settings.port == 1003  # flag beats env and file
    assert settings.batch_max_size == 4  # env beats file
    assert settings.session_ttl_s == 5.5  # file only
    assert settings.stage_addresses == ["file:1", "file:2"]  # TOML array
    assert settings.step_timeout_s == CoordinatorSettings().step_timeout_s  # default


def test_file_section_is_chosen_by_command(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[coordinator]\nport = 1001\n[shard]\nport = 2001\nstage = 2\n")
    shard = load(ShardSettings, "shard", parse("shard", "--config", str(path)), NO_ENV)
    assert (shard.port, shard.stage) == (2001, 2)


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[shard]\nseed = 11\n")
    environ = {"ACTIONMESH_CONFIG": str(path)}
    assert load(ShardSettings, "shard", parse("shard"), environ).seed == 11


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, "[shard]\nseed = 11\n")
    ignored = tmp_path / "other.toml"
    ignored.write_text("[shard]\nseed = 22\n")
    args = parse("shard", "--config", str(chosen))
    settings = load(ShardSettings, "shard", args, {"ACTIONMESH_CONFIG": str(ignored)})
    assert settings.seed == 11


def test_explicit_environ_is_the_only_environment_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONMESH_SEED", "99")
    assert load(ShardSettings, "shard", parse("shard"), NO_ENV).seed == 0
    assert load(ShardSettings, "shard", parse("shard"), {"ACTIONMESH_SEED": "5"}).seed == 5


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIONMESH_SEED", "99")
    assert load(ShardSettings, "shard", parse("shard")).seed == 99


def test_values_are_converted_to_the_field_types(tmp_path: Path) -> None:
    args = parse(
        "shard", "--weights-dir", str(tmp_path), "--ready-file", "ready.json", "--stage", "2"
    )
    settings = load(ShardSettings, "shard", args, NO_ENV)
    assert settings.weights_dir == tmp_path
    assert settings.ready_file == Path("ready.json")
    assert settings.stage == 2


def test_settings_are_frozen() -> None:
    settings = load(ShardSettings, "shard", parse("shard"), NO_ENV)
    with pytest.raises(ValueError, match="frozen"):
        settings.seed = 3  # type: ignore[misc]


# --- lists and booleans -------------------------------------------------------------------


def test_list_from_env_is_comma_separated() -> None:
    environ = {"ACTIONMESH_STAGE_ADDRESSES": "a:1, b:2,,c:3 "}
    settings = load(CoordinatorSettings, "coordinator", parse("coordinator"), environ)
    assert settings.stage_addresses == ["a:1", "b:2", "c:3"]


def test_list_of_ints_from_env() -> None:
    settings = load(
        BenchSettings, "bench", parse("bench"), {"ACTIONMESH_CONCURRENCY": "2,8"}
    )
    assert settings.concurrency == [2, 8]


def test_list_from_flags_beats_env_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[coordinator]\nstage_addresses = ["file:1"]\n')
    args = parse("coordinator", "--config", str(path), "--stage-addresses", "flag:1,flag:2")
    environ = {"ACTIONMESH_STAGE_ADDRESSES": "env:1"}
    settings = load(CoordinatorSettings, "coordinator", args, environ)
    assert settings.stage_addresses == ["flag:1", "flag:2"]


def test_list_of_ints_from_flags() -> None:
    settings = load(BenchSettings, "bench", parse("bench", "--concurrency", "3,5"), NO_ENV)
    assert settings.concurrency == [3, 5]


def test_bool_from_renamed_flag_and_env() -> None:
    assert load(BenchSettings, "bench", parse("bench", "--json"), NO_ENV).json_output
    environ = {"ACTIONMESH_JSON_OUTPUT": "true"}
    assert load(BenchSettings, "bench", parse("bench"), environ).json_output
    assert not load(BenchSettings, "bench", parse("bench", "--no-json"), environ).json_output


# --- invalid values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "flag"),
    [
        (["coordinator", "--port", "99999"], NO_ENV, "--port"),
        (["coordinator", "--batch-max-size", "0"], NO_ENV, "--batch-max-size"),
        (["coordinator", "--step-timeout-s", "soon"], NO_ENV, "--step-timeout-s"),
        (["coordinator"], {"ACTIONMESH_SESSION_TTL_S": "-1"}, "--session-ttl-s"),
        (["shard", "--torch-threads", "0"], NO_ENV, "--torch-threads"),
        (["bench", "--concurrency", "1,x"], NO_ENV, "--concurrency"),
        (["bench", "--steps", "3"], NO_ENV, "--steps"),
        (["demo", "--rate-hz", "0"], NO_ENV, "--rate-hz"),
    ],
)
def test_invalid_value_exits_with_a_message_naming_the_flag(
    argv: list[str], environ: dict[str, str], flag: str
) -> None:
    command = argv[0]
    message = load_error(COMMANDS[command], command, parse(*argv), environ)
    assert message.startswith(f"actionmesh {command}: invalid settings")
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message), message


def test_every_invalid_field_is_named() -> None:
    args = parse("coordinator", "--port", "-1", "--grpc-workers", "0")
    message = load_error(CoordinatorSettings, "coordinator", args, NO_ENV)
    assert "--port" in message
    assert "--grpc-workers" in message


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[coordinator]\nport = 1001\nstage_adresses = ['a:1']\n")
    args = parse("coordinator", "--config", str(path))
    message = load_error(CoordinatorSettings, "coordinator", args, NO_ENV)
    assert "stage-adresses" in message or "stage_adresses" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_env_vars_are_ignored() -> None:
    environ = {"ACTIONMESH_NOT_A_SETTING": "1", "OTHER_PORT": "5"}
    settings = load(ShardSettings, "shard", parse("shard"), environ)
    assert settings == ShardSettings()


def flags_named_in(message: str) -> list[str]:
    return re.findall(r"--[a-z0-9][a-z0-9-]*", message)


@pytest.mark.parametrize(
    ("command", "environ"),
    [
        ("coordinator", {"ACTIONMESH_BATCH_MAX_WAIT_MS": "-5"}),
        ("shard", {"ACTIONMESH_REPLICA_ID": "x", "ACTIONMESH_STAGE": "-1"}),
        ("bench", {"ACTIONMESH_JSON_OUTPUT": "maybe"}),
    ],
)
def test_flags_named_in_errors_exist(
    command: str, environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    message = load_error(COMMANDS[command], command, parse(command), environ)
    named = flags_named_in(message)
    assert named, message
    options = set(re.findall(r"--[a-z0-9][a-z0-9-]*", help_text(command, capsys)))
    assert set(named) <= options, (named, message)


# --- --help -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_of_every_command_shows_field_descriptions(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = squeeze(help_text(command, capsys))
    cls = COMMANDS[command]
    assert "--config" in text
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"
        assert squeeze(field.description) in text, name
        assert f"ACTIONMESH_{name.upper()}" in text, name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_a_flag_per_field(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(command, capsys)
    renames = {"json_output": "--json"} if command == "bench" else {}
    for name in COMMANDS[command].model_fields:
        flag = renames.get(name, "--" + name.replace("_", "-"))
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["shard", "--no-such-flag", "1"])
    assert caught.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
