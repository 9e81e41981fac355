"""The address a server tells others to reach it at (what a shard registers in etcd).

A wildcard bind (0.0.0.0, ::) is not an address anyone can dial, and a loopback address is
one only the same host can: registering either for a remote etcd's readers would route every
coordinator to itself. `advertise_address` picks what to register or refuses with the flag to
set; `host_addresses` reads this host's interface addresses (stdlib only: ioctl for IPv4,
/proc/net/if_inet6 for IPv6, so it works in a slim container without iproute2).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_SIOCGIFADDR = 0x8915
_IF_INET6 = Path("/proc/net/if_inet6")


class UnroutableAddress(ValueError):
    """The address this process would advertise cannot be reached by those who read it."""


def format_host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 literal in brackets ([fd00::2]:50051)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, str]:
    """`h:p` or `[v6]:p` -> (host, port text); the port may be missing ('')."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.removeprefix(":")
    if address.count(":") > 1:  # a bare IPv6 literal, no port
        return address, ""
    host, _, port = address.partition(":")
    return host, port


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name: assume it names another host
        return False


def _routable(address: str, families: set[int]) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.version in families and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def advertise_address(
    bind_host: str,
    port: int,
    advertise: str,
    etcd_hosts: Sequence[str],
    candidates: Iterable[str],
) -> str:
    """host:port to register, for a server bound to bind_host:port.

    `advertise` (--advertise-address) wins if routable; a wildcard bind takes this host's one
    routable address of the wildcard's family (`candidates`, from host_addresses()), and is
    refused when there are none or several; a loopback address is refused when any etcd
    member is on another host (its other readers, the coordinators, may be too)."""
    remote_etcd = any(not is_loopback(h) for h in etcd_hosts)
    if advertise:
        host, port_text = split_host_port(advertise)
        if not port_text.isdigit():
            raise UnroutableAddress(
                f"--advertise-address {advertise!r} needs a port: host:port (bound port {port})"
            )
        _refuse_unroutable(host, remote_etcd, f"--advertise-address {advertise}")
        return advertise
    if bind_host in WILDCARDS:
        families = {4} if bind_host == "0.0.0.0" else {4, 6}
        routable = sorted({a for a in candidates if _routable(a, families)})
        if len(routable) != 1:
            found = ", ".join(routable) or "none"
            raise UnroutableAddress(
                f"--host {bind_host or '(empty)'} is not an address others can dial and this "
                f"host's routable addresses are ambiguous ({found}): set --advertise-address "
                f"host:port (e.g. the pod IP and port {port})"
            )
        return format_host_port(routable[0], port)
    _refuse_unroutable(bind_host, remote_etcd, f"--host {bind_host}")
    return format_host_port(bind_host, port)


def _refuse_unroutable(host: str, remote_etcd: bool, source: str) -> None:
    if host in WILDCARDS:
        raise UnroutableAddress(
            f"{source} is a wildcard, not an address others can dial: set --advertise-address "
            "to this host's routable host:port"
        )
    if remote_etcd and is_loopback(host):
        raise UnroutableAddress(
            f"{source} is a loopback address but etcd is on another host, so coordinators "
            "elsewhere could not reach this shard: bind --host to a routable address (or "
            "0.0.0.0) and set --advertise-address host:port"
        )


def host_addresses() -> list[str]:
    """Every IPv4 (primary, per interface) and IPv6 address configured on this host."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            found.append(socket.inet_ntoa(reply[20:24]))
    try:
        lines = _IF_INET6.read_text().splitlines()
    except OSError:  # IPv6 disabled
        lines = []
    for line in lines:
        hex_address = line.split()[0]
        found.append(str(ipaddress.IPv6Address(bytes.fromhex(hex_address))))
    return found
