"""nftables rules inside the chaos suite's network namespaces (service/local/netns.py): the
drop rules of its partitions.

`nft` from PATH, else Debian's nftables package and the libraries the machine lacks, fetched
with the ordinary apt client into a cache folder and unpacked there (service/local/apt_cache.py;
nothing is installed): `nft` then runs with LD_LIBRARY_PATH naming the unpacked libraries,
which only it sees. `ACTIONMESH_NFT_CACHE` moves the cache (~3 MB); delete it to fetch again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from service.local import apt_cache, netns

CACHE = Path(
    os.environ.get("ACTIONMESH_NFT_CACHE", Path.home() / ".cache" / "actionmesh" / "nftables")
)
PACKAGE = "nftables"


class NftFailed(RuntimeError):
    """nft refused a ruleset, or could not be run; the message holds its own words."""


def command() -> list[str]:
    """The argv that runs nft (fetched on first use when not on PATH). Raises
    apt_cache.AptUnavailable when it is neither on PATH nor to be had from apt."""
    on_path = shutil.which("nft")
    if on_path is not None:
        return [on_path]
    binary = CACHE / "usr" / "sbin" / "nft"
    if not binary.is_file():
        apt_cache.unpack(apt_cache.missing([PACKAGE]), CACHE)
    libraries = sorted({str(p.parent) for p in CACHE.rglob("*.so*")})
    return ["env", f"LD_LIBRARY_PATH={':'.join(libraries)}", str(binary)]


def drop_table(name: str, way_out: list[str], way_in: list[str]) -> str:
    """An nft ruleset: table inet `name` dropping the packets that match any of `way_out` (nft
    match expressions) on output and any of `way_in` on input; everything else passes."""
    lines = [f"table inet {name} {{"]
    for chain, rules in (("output", way_out), ("input", way_in)):
        lines.append(f"    chain {chain} {{ type filter hook {chain} priority 0; policy accept;")
        lines += [f"        {rule} drop" for rule in rules]
        lines.append("    }")
    return "\n".join([*lines, "}", ""])


def apply(hosts: netns.HostMap, host: str, ruleset: str) -> None:
    """Load `ruleset` (nft -f syntax, applied atomically) in host `host`'s namespace."""
    try:
        done = subprocess.run(
            hosts.run_in(host, [*command(), "-f", "-"]),
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except apt_cache.AptUnavailable as exc:
        raise NftFailed(f"no nft: {exc}") from exc
    if done.returncode != 0:
        raise NftFailed(f"nft -f in {host} failed: {done.stderr.strip()}\n{ruleset}")


def unavailable() -> str | None:
    """Why drop rules cannot be set in namespaces here (no namespaces, no nft, no nf_tables in
    the kernel), or None. Tries one table in a throwaway namespace."""
    why = netns.unavailable()
    if why is not None:
        return why
    try:
        nft = command()
    except apt_cache.AptUnavailable as exc:
        return f"nft is not on PATH and apt cannot fetch it: {exc}"
    with netns.Hosts(["nftprobe"]) as probe:
        done = subprocess.run(
            probe.run_in("nftprobe", [*nft, "add", "table", "inet", "actionmesh_probe"]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    if done.returncode != 0:
        return f"nft cannot add a table in a network namespace: {done.stderr.strip()}"
    return None
