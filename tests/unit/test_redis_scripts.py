"""Every Lua script names the keys it touches only through KEYS (which the store fills with one
session's hash-tagged keys): a key built inside a script could land on another Cluster slot,
and a Cluster would refuse the script (tests/integration/test_store_contract.py runs them on a
real one)."""

from __future__ import annotations

import re

import pytest

from state import redis_scripts

SCRIPTS = {
    name: getattr(redis_scripts, name) for name in dir(redis_scripts) if name.endswith("_LUA")
}
CALL = re.compile(r"redis\.call\('(?P<command>[A-Z]+)',\s*(?P<key>[^,)]+)")


def test_the_scripts_are_found() -> None:
    assert set(SCRIPTS) == {"CREATE_LUA", "COMMIT_LUA", "TOUCH_LUA"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_call_names_its_key_through_keys(name: str) -> None:
    script = SCRIPTS[name]
    calls = CALL.findall(script)
    assert calls and len(calls) == script.count("redis.call("), name
    for command, key in calls:
        assert re.fullmatch(r"KEYS\[\d\]", key), f"{name}: {command} on {key}"
