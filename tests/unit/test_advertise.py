"""What a shard registers in etcd: never an address the coordinators elsewhere cannot dial."""

from __future__ import annotations

import pytest

from service.runtime.advertise import (
    UnroutableAddress,
    advertise_address,
    format_host_port,
    split_host_port,
)

HOST_IPS = ["127.0.0.1", "10.0.0.7", "::1", "fe80::1"]  # one routable address (IPv4)
REMOTE_ETCD = ["10.0.0.2"]
LOCAL_ETCD = ["127.0.0.1"]


def test_wildcard_bind_advertises_the_hosts_one_routable_address() -> None:
    assert advertise_address("0.0.0.0", 50051, "", REMOTE_ETCD, HOST_IPS) == "10.0.0.7:50051"


def test_ipv6_wildcard_counts_global_ipv6_addresses_too() -> None:
    assert advertise_address("::", 7, "", REMOTE_ETCD, ["::1", "fd00::2"]) == "[fd00::2]:7"
    with pytest.raises(UnroutableAddress, match=r"10\.0\.0\.7, fd00::2"):
        advertise_address("::", 7, "", REMOTE_ETCD, ["10.0.0.7", "fd00::2"])


@pytest.mark.parametrize(
    "addresses", [["127.0.0.1", "10.0.0.7", "192.168.1.5"], ["127.0.0.1", "169.254.0.3"]]
)
def test_wildcard_bind_with_several_or_no_routable_addresses_is_refused(
    addresses: list[str],
) -> None:
    with pytest.raises(UnroutableAddress, match="--advertise-address"):
        advertise_address("0.0.0.0", 50051, "", REMOTE_ETCD, addresses)


@pytest.mark.parametrize("advertise", ["0.0.0.0:50051", "[::]:50051"])
def test_a_wildcard_advertise_address_is_refused(advertise: str) -> None:
    with pytest.raises(UnroutableAddress, match="wildcard"):
        advertise_address("0.0.0.0", 50051, advertise, LOCAL_ETCD, HOST_IPS)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_is_refused_when_etcd_is_remote(host: str) -> None:
    with pytest.raises(UnroutableAddress, match="--advertise-address"):
        advertise_address(host, 50051, "", ["etcd-0.etcd.actionmesh.svc", *LOCAL_ETCD], HOST_IPS)
    with pytest.raises(UnroutableAddress, match="loopback"):
        advertise_address("0.0.0.0", 50051, format_host_port(host, 50051), REMOTE_ETCD, HOST_IPS)


def test_loopback_is_fine_when_every_etcd_member_is_local() -> None:
    assert advertise_address("127.0.0.1", 5, "", ["localhost", "::1"], []) == "127.0.0.1:5"


def test_an_explicit_routable_advertise_address_wins() -> None:
    assert advertise_address("0.0.0.0", 5, "10.9.9.9:6000", REMOTE_ETCD, []) == "10.9.9.9:6000"


def test_an_advertise_address_without_a_port_is_refused() -> None:
    with pytest.raises(UnroutableAddress, match="needs a port"):
        advertise_address("0.0.0.0", 5, "10.9.9.9", REMOTE_ETCD, HOST_IPS)


def test_split_host_port_reads_ipv6_literals() -> None:
    assert split_host_port("[fd00::2]:7") == ("fd00::2", "7")
    assert split_host_port("h:7") == ("h", "7")
    assert split_host_port("fd00::2") == ("fd00::2", "")
