"""A partition as the chaos suite makes it (service/local/nft.py in service/local/netns.py
hosts): drop rules in one host's namespace cut its TCP to the other host both ways, and
deleting the table heals the link."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from service.local import netns, nft

PORT = 7000
# Listens on its host's address and answers each connection with one byte.
SERVER = f"""
import socket, sys
s = socket.create_server((sys.argv[1], {PORT}))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"x")
    c.close()
"""
CONNECT = f"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], {PORT}), timeout=1) as c:
        print(c.recv(1).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(scope="module")
def hosts() -> Iterator[netns.Hosts]:
    if (why := nft.unavailable()) is not None:
        pytest.skip(f"no network namespaces with nftables here: {why}")
    with netns.Hosts(["a", "b"]) as made:
        server = subprocess.Popen(
            made.run_in("b", [sys.executable, "-c", SERVER, made.address["b"]]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            yield made
        finally:
            server.kill()
            server.wait()


def connect(hosts: netns.Hosts, source: str, target: str) -> str:
    done = subprocess.run(
        hosts.run_in(source, [sys.executable, "-c", CONNECT, hosts.address[target]]),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_drop_rules_cut_a_host_off_both_ways_and_deleting_them_heals_it(
    hosts: netns.Hosts,
) -> None:
    assert connect(hosts, "a", "b") == "x"
    b = hosts.address["b"]
    # Only the way in, on a's side: a's SYN reaches b, b's SYN-ACK is dropped.
    nft.apply(hosts.map, "a", nft.drop_table("cut", [], [f"ip saddr {b}"]))
    assert connect(hosts, "a", "b") == "TimeoutError"
    nft.apply(hosts.map, "a", "delete table inet cut\n")
    assert connect(hosts, "a", "b") == "x"
    # The way out, as partition-redis cuts one port: nothing leaves a for b's port.
    nft.apply(hosts.map, "a", nft.drop_table("cut", [f"ip daddr {b} tcp dport {{ {PORT} }}"], []))
    assert connect(hosts, "a", "b") == "TimeoutError"
    nft.apply(hosts.map, "a", "delete table inet cut\n")
    assert connect(hosts, "a", "b") == "x"


def test_a_bad_ruleset_is_refused_with_nfts_own_words(hosts: netns.Hosts) -> None:
    with pytest.raises(nft.NftFailed, match="nft -f in a failed"):
        nft.apply(hosts.map, "a", "table inet t { chain c { nonsense } }\n")
