"""The identities file: hashed tokens only, strict parsing with one-line errors, appended by
`token add` (0600, still parsing), re-read when it changes and kept when a change is bad."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from service.runtime import identities_file
from service.runtime.identities_file import (
    Identities,
    IdentitiesFile,
    IdentitiesFileError,
    append_token,
    read_identities,
    token_hash,
)
from service.runtime.identity import Scope

pytestmark = pytest.mark.timeout(10)

GOOD_HASH = "a" * 64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[token]]\nidentity = 'r'\nscopes = ['step']\nsha256 = 'xyz'\n", "64 lower-case hex"),
        (f"[[token]]\nidentity = 'r'\nscopes = ['root']\nsha256 = '{GOOD_HASH}'\n", "scopes"),
        (f"[[token]]\nidentity = 'r'\nscopes = []\nsha256 = '{GOOD_HASH}'\n", "non-empty"),
        (f"[[token]]\nidentity = ' r'\nscopes = ['step']\nsha256 = '{GOOD_HASH}'\n", "identity"),
        (
            f"[[token]]\nidentity = 'r'\nscopes = ['step']\nsha256 = '{GOOD_HASH}'\ntoken = 'x'\n",
            "unknown key 'token'",
        ),
        (
            "[[token]]\nidentity = 'r'\nscopes = ['step']\nsha256 = '"
            + GOOD_HASH
            + "'\n[[token]]\nidentity = 'q'\nscopes = ['step']\nsha256 = '"
            + GOOD_HASH
            + "'\n",
            "listed twice",
        ),
        ("[users]\n", "unknown table"),
        ("[[token]\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(IdentitiesFileError, match=problem) as caught:
        Identities.parse(text, "ids.toml")
    assert "\n" not in str(caught.value)


def test_token_add_appends_only_the_hash_and_the_token_proves_the_identity(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ids.toml"
    token = append_token(path, "robot-7", frozenset({Scope.STEP}))
    second = append_token(path, "ops", frozenset({Scope.ADMIN, Scope.CHECKPOINT}))
    text = path.read_text()
    assert token not in text and second not in text
    assert token_hash(token) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    found = read_identities(path)
    assert found.tokens[token_hash(token)].name == "robot-7"
    assert found.tokens[token_hash(second)].scopes == frozenset({Scope.ADMIN, Scope.CHECKPOINT})
    assert len(token) >= 40 and token != second


def test_token_add_refuses_a_bad_identity_name_and_a_file_that_does_not_parse(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ids.toml"
    with pytest.raises(IdentitiesFileError, match="--identity"):
        append_token(path, "robot 7", frozenset({Scope.STEP}))
    path.write_text("[[token]\n")
    with pytest.raises(IdentitiesFileError, match="not valid TOML"):
        append_token(path, "robot-7", frozenset({Scope.STEP}))
    assert path.read_text() == "[[token]\n"


def test_a_changed_file_is_reread_and_a_broken_change_keeps_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identities_file, "RELOAD_EVERY_S", 0.0)
    path = tmp_path / "ids.toml"
    first = append_token(path, "robot-7", frozenset({Scope.STEP}))
    directory = IdentitiesFile(path, frozenset({Scope.STEP}))
    assert directory.by_token(first) is not None
    second = append_token(path, "robot-8", frozenset({Scope.STEP}))
    found = directory.by_token(second)
    assert found is not None and found.name == "robot-8"
    path.write_text(path.read_text() + "\n[[token]\n")  # a half-written edit
    assert directory.by_token(second) is not None  # still the last good file
    path.write_text("")  # every token revoked
    assert directory.by_token(first) is None and directory.by_token(second) is None
