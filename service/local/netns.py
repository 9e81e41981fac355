"""Separate hosts on one machine: Linux network namespaces joined by a bridge.

Each host is a namespace with its own loopback and one veth into a switch namespace that
holds the bridge, with an address on a private /24; nothing is added to the machine's own
namespace, and no namespace has a route beyond the /24, so no traffic can leave them. Needs
root (or CAP_NET_ADMIN) and iproute2; `unavailable()` says why not.

`Hosts` makes and deletes them; `HostMap` names them, and travels in an environment variable
to a process started inside one of them (the chaos suite runs its cluster that way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Self

from service.local.lifecycle import Lifecycle

SUBNET = "10.200.0"  # private, and only inside these namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not on this machine"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (ip netns add)"
    probe = f"amprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass(frozen=True)
class HostMap:
    """Each host's namespace (as `ip netns` names it) and address."""

    namespaces: dict[str, str]
    address: dict[str, str]

    def run_in(self, name: str, argv: list[str]) -> list[str]:
        """`argv` as run on host `name` (ip netns exec execs it: the pid is argv's own)."""
        return ["ip", "netns", "exec", self.namespaces[name], *argv]

    def to_json(self) -> str:
        return json.dumps({"namespaces": self.namespaces, "address": self.address})

    @staticmethod
    def from_json(text: str) -> HostMap:
        data = json.loads(text)
        return HostMap(dict(data["namespaces"]), dict(data["address"]))


class Hosts(Lifecycle):
    """Hosts named by the caller, addresses SUBNET.1, .2, ... in the order given."""

    def __init__(self, names: list[str]) -> None:
        tag = f"am{os.getpid() % 100000}"
        self._switch = f"{tag}-sw"
        self._namespaces = {name: f"{tag}-{name}" for name in names}
        self.address = {name: f"{SUBNET}.{i}" for i, name in enumerate(names, start=1)}
        self.map = HostMap(self._namespaces, self.address)

    def start(self) -> Self:
        try:
            _ip("netns", "add", self._switch)
            _ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self._switch, "link", "set", "br0", "up")
            for i, (name, ns) in enumerate(self._namespaces.items(), start=1):
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                port = f"port{i}"
                _ip(
                    "-n",
                    ns,
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    port,
                    "netns",
                    self._switch,
                )
                _ip("-n", self._switch, "link", "set", port, "master", "br0")
                _ip("-n", self._switch, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Delete every namespace (their veths go with them)."""
        for ns in [*self._namespaces.values(), self._switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def run_in(self, name: str, argv: list[str]) -> list[str]:
        """`argv` as run on host `name` (ip netns exec execs it: the pid is argv's own)."""
        return self.map.run_in(name, argv)
