"""Settings: config file < env vars < flags, validation messages and rules between fields,
the log level from anywhere, one cluster default, and the --help of every command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from checkpoint.remote import DEFAULT_GRACE_S
from service.cli.main import build_parser, command_settings, main
from service.runtime.command_settings import (
    BenchSettings,
    CertsSettings,
    CkptSettings,
    DemoSettings,
    StatusSettings,
    TrainSettings,
)
from service.runtime.settings import (
    ClusterSettings,
    CoordinatorSettings,
    InvalidSettings,
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
    "ckpt": CkptSettings,
    "status": StatusSettings,
    "train": TrainSettings,
    "certs": CertsSettings,
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
    with pytest.raises(InvalidSettings) as caught:
        load(cls, section, args, environ=environ)
    message = str(caught.value)
    assert "\n" not in message, message  # one line
    return message


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
    settings = load(BenchSettings, "bench", parse("bench"), {"ACTIONMESH_CONCURRENCY": "2,8"})
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
        (["bench", "--scale", "--failover"], NO_ENV, "--scale"),
        (["bench", "--degraded", "--scale"], NO_ENV, "--degraded"),
        (["bench", "--scale", "--redis-url", "redis://127.0.0.1:1/0"], NO_ENV, "--redis-url"),
        (["coordinator", "--redis-url", "redis+cluster://r1:1/3"], NO_ENV, "--redis-url"),
        (["coordinator", "--redis-url", "redis+sentinel://s1:1"], NO_ENV, "--redis-url"),
        (["up", "--redis-url", "redis+cluster://r1"], NO_ENV, "--redis-url"),
        (
            ["up", "--redis-url", "redis://127.0.0.1:1/0", "--redis-cluster-primaries", "3"],
            NO_ENV,
            "--redis-cluster-primaries",
        ),
        (["demo", "--rate-hz", "0"], NO_ENV, "--rate-hz"),
        (["demo", "--no-faults", "--kill-stage-at-s", "5"], NO_ENV, "--kill-stage-at-s"),
        (["demo", "--kill-stage-at-s", "30"], NO_ENV, "--duration-s"),
    ],
)
def test_invalid_value_exits_with_a_message_naming_the_flag(
    argv: list[str], environ: dict[str, str], flag: str
) -> None:
    command = argv[0]
    message = load_error(COMMANDS[command], command, parse(*argv), environ)
    assert message.startswith(f"actionmesh {command}: invalid settings")
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message), message


def test_the_demo_faults_a_quarter_in_by_default_when_told_or_not_at_all() -> None:
    assert DemoSettings(duration_s=30).fault_at_s == 7.5
    assert DemoSettings(duration_s=30, kill_stage_at_s=4).fault_at_s == 4.0
    assert DemoSettings(duration_s=30, faults=False).fault_at_s is None


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
    renames = {"json_output": "--json"}
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


# --- one cluster default ------------------------------------------------------------------


def every_settings_class(cls: type[Settings] = Settings) -> list[type[Settings]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *every_settings_class(sub)]
    return found


def test_every_command_defaults_to_the_same_cluster() -> None:
    # `ckpt promote V --etcd URL` must write where the coordinators started without --cluster
    # look, and `status --etcd URL` must read where `up` and `shard` register.
    defaults = {
        cls.__name__: cls.model_fields["cluster"].default
        for cls in every_settings_class()
        if "cluster" in cls.model_fields
    }
    assert {"CoordinatorSettings", "ShardSettings", "ClusterSettings"} <= set(defaults)
    assert {"CkptSettings", "StatusSettings"} <= set(defaults)
    assert len(set(defaults.values())) == 1, defaults


def test_commands_from_the_readme_meet_under_one_cluster() -> None:
    etcd = "etcd://127.0.0.1:2379"
    clusters = {
        command: command_settings(parse(*argv, "--etcd", etcd), NO_ENV).model_dump()["cluster"]
        for command, argv in {
            "up": ["up"],
            "coordinator": ["coordinator"],
            "shard": ["shard", "--stage", "1"],
            "status": ["status"],
            "ckpt": ["ckpt", "promote", "m-1"],
        }.items()
    }
    assert len(set(clusters.values())) == 1, clusters


# --- rules between fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (
            ["coordinator", "--replica-wait-timeout-s", "0.6"],
            ["--replica-wait-timeout-s", "--redis-timeout-s"],
        ),
        (
            ["coordinator", "--redis-timeout-s", "0.5"],  # default wait 0.4 > 0.25
            ["--replica-wait-timeout-s", "--redis-timeout-s"],
        ),
        (["coordinator", "--ban-base-s", "40"], ["--ban-base-s", "--ban-max-s"]),
        (["coordinator", "--session-ttl-s", "7200"], ["--session-ttl-s", "--max-session-ttl-s"]),
        (["coordinator", "--stage-timeout-s", "3"], ["--stage-timeout-s", "--step-timeout-s"]),
        (["coordinator", "--step-timeout-s", "0.05"], ["--step-timeout-s"]),
        (["coordinator", "--catch-up-budget-s", "2.5"], ["--catch-up-budget-s"]),
        (["shard", "--remote", "file:///tmp/r"], ["--remote", "--flash-dir"]),
        (["coordinator", "--remote", "file:///tmp/r"], ["--remote", "--flash-dir"]),
        (["bench", "--wait-replicas", "1"], ["--wait-replicas", "--redis-replicas"]),
    ],
)
def test_rules_between_fields_name_both_flags(argv: list[str], flags: list[str]) -> None:
    command = argv[0]
    message = load_error(COMMANDS[command], command, parse(*argv), NO_ENV)
    assert message.startswith(f"actionmesh {command}: invalid settings: "), message
    assert "Value error" not in message
    for flag in flags:
        assert flag in message, (flag, message)


@pytest.mark.parametrize(
    "argv",
    [
        ["coordinator", "--replica-wait-timeout-s", "0.5", "--redis-timeout-s", "1"],  # = half
        ["coordinator", "--ban-base-s", "30"],
        ["coordinator", "--session-ttl-s", "3600"],
        ["coordinator", "--stage-timeout-s", "2", "--catch-up-budget-s", "2"],
        ["shard", "--remote", "file:///tmp/r", "--flash-dir", "/tmp/f"],
        ["bench", "--wait-replicas", "1", "--redis-replicas", "1"],
        ["bench", "--wait-replicas", "1", "--redis-url", "redis://elsewhere:6379/0"],
    ],
)
def test_rules_between_fields_allow_the_limit(argv: list[str]) -> None:
    load(COMMANDS[argv[0]], argv[0], parse(*argv), NO_ENV)


def test_rule_applies_to_values_from_env_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[coordinator]\nredis_timeout_s = 0.5\n")
    args = parse("coordinator", "--config", str(path))
    message = load_error(CoordinatorSettings, "coordinator", args, NO_ENV)
    assert "--replica-wait-timeout-s" in message
    environ = {"ACTIONMESH_REPLICA_WAIT_TIMEOUT_S": "0.2"}
    assert load(CoordinatorSettings, "coordinator", args, environ).redis_timeout_s == 0.5


def test_defaults_of_every_command_are_valid() -> None:
    for cls in COMMANDS.values():
        cls.model_validate({})


def test_invalid_settings_are_one_line_and_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["coordinator", "--replica-wait-timeout-s", "0.9", "--port", "70000"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("actionmesh coordinator: invalid settings: ")
    assert "--port" in lines[0]  # field errors first: the rule runs once every field is valid


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "cannot read config file"), ("[coordinator\nport = 1", "not valid TOML")],
)
def test_unusable_config_file_is_a_usage_error(
    tmp_path: Path, content: str | None, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "actionmesh.toml"
    if content is not None:
        path.write_text(content)
    code = main(["coordinator", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("actionmesh coordinator: ") and expected in err, err


# --- --log-level --------------------------------------------------------------------------


def log_level(*argv: str, environ: dict[str, str] = NO_ENV) -> str:
    level: str = command_settings(parse(*argv), environ).log_level
    return level


def test_log_level_defaults_to_info() -> None:
    assert log_level("ckpt", "list") == "INFO"


def test_log_level_before_or_after_the_command() -> None:
    assert log_level("--log-level", "debug", "ckpt", "list") == "DEBUG"
    assert log_level("ckpt", "list", "--log-level", "debug") == "DEBUG"
    assert log_level("status", "--log-level", "warning") == "WARNING"
    # both: the one after the command is the more specific
    assert log_level("--log-level", "error", "shard", "--log-level", "debug") == "DEBUG"


def test_log_level_from_env_and_file(tmp_path: Path) -> None:
    environ = {"ACTIONMESH_LOG_LEVEL": "debug"}
    assert log_level("ckpt", "list", environ=environ) == "DEBUG"
    assert log_level("ckpt", "list", "--log-level", "error", environ=environ) == "ERROR"
    assert log_level("--log-level", "error", "ckpt", "list", environ=environ) == "ERROR"
    path = write_toml(tmp_path, '[ckpt]\nlog_level = "warning"\n')
    assert log_level("ckpt", "list", "--config", str(path)) == "WARNING"
    assert log_level("ckpt", "list", "--config", str(path), environ=environ) == "DEBUG"


def test_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ckpt", "list", "--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    assert "--log-level" in err and "loud" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "--etcd", "127.0.0.1:2379"], "--etcd: bad etcd URL"),
        (["ckpt", "list", "--etcd", "etcd://h:port"], "--etcd: bad endpoint"),
        (["up", "--cluster", "a/b"], "--cluster: a cluster name is 1-63 letters"),
        (["coordinator", "--cluster", ""], "--cluster: a cluster name"),
    ],
)
def test_an_etcd_url_or_cluster_name_no_command_could_use_is_a_usage_error(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err, err


def test_ckpt_gc_grace_from_file_env_and_flag(tmp_path: Path) -> None:
    assert CkptSettings().grace_s == DEFAULT_GRACE_S
    path = write_toml(tmp_path, "[ckpt]\ngrace_s = 600\n")
    assert (
        load(CkptSettings, "ckpt", parse("ckpt", "gc", "--config", str(path)), NO_ENV).grace_s
        == 600
    )
    environ = {"ACTIONMESH_GRACE_S": "60"}
    assert load(CkptSettings, "ckpt", parse("ckpt", "gc"), environ).grace_s == 60
    assert load(CkptSettings, "ckpt", parse("ckpt", "gc", "--grace-s", "0"), environ).grace_s == 0
    for bad in ("-1", "nan", "soon"):
        assert "--grace-s" in load_error(
            CkptSettings, "ckpt", parse("ckpt", "gc", "--grace-s", bad), NO_ENV
        )
