"""Egress filtering: a container that may reach only the addresses of an allowlist.

The filter is an nf_tables table in the container's own network namespace, loaded by a host
root process that joins that namespace alone (the sandbox helper, before the container's command
runs; the exec server, to replace it on a running sandbox). The container's processes never
hold CAP_NET_ADMIN, so they cannot change it; they lose CAP_NET_RAW too, because a packet
socket writes frames straight to the interface, past every netfilter hook of the namespace.

What the table allows out, all else rejected (a TCP reset, or ICMP "administratively
prohibited": a connection fails at once instead of hanging until its timeout):
loopback; replies of connections already made (`ct state established,related`); IPv6 neighbour
and router solicitations (without them no IPv6 address is reachable at all); the allowlist's
networks; and port 53 of the resolvers the container's `/etc/resolv.conf` names (see
`ruleset`).

Rules are loaded with Debian's `nft` (package `nftables`) rather than netlink messages written
here: the nf_tables netlink encoding (expressions, set intervals, transactions) is large and
kernel-versioned, and `nft -f` applies a whole ruleset in one atomic transaction.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from kiln.errors import InvalidRequest, SandboxUnavailable

TABLE = "kiln_egress"
# The most entries one allowlist may have (each is one element of an interval set).
MAX_ENTRIES = 4096
# Removed from a filtered container's capabilities: packet sockets bypass netfilter.
CAP_BYPASSING_FILTERS = "CAP_NET_RAW"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EgressFilter:
    """A running container's filter: what loading new rules into it needs."""

    nft: str  # the host's nft binary
    resolvers: tuple[str, ...]  # the name servers its /etc/resolv.conf names

    def ruleset(self, allowlist: tuple[str, ...] | None) -> str:
        return ruleset(allowlist, self.resolvers)


def parse_allowlist(entries: Iterable[str]) -> tuple[str, ...]:
    """The allowlist's networks in canonical form (`10.0.0.0/8`, `2001:db8::/32`); a bare address
    is one host. InvalidRequest names the first entry that is not a network."""
    networks: list[str] = []
    for entry in entries:
        networks.append(str(_network(entry)))
        if len(networks) > MAX_ENTRIES:
            raise InvalidRequest(
                f"an outbound CIDR allowlist may have at most {MAX_ENTRIES} entries; merge adjacent networks"
            )
    return tuple(dict.fromkeys(networks))


def _network(entry: str) -> Network:
    text = entry.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidRequest(
                f"{entry!r} in the outbound CIDR allowlist is not an IPv4 or IPv6 network; write it as "
                "an address with a prefix length, like '10.0.0.0/8', '203.0.113.7/32' or '2001:db8::/32'"
            ) from exc
        address = text.split("/")[0]
        raise InvalidRequest(
            f"{entry!r} in the outbound CIDR allowlist has bits set beyond its prefix length; write the "
            f"network as {str(loose)!r}, or the single address as '{address}/{loose.max_prefixlen}' "
            "if that was meant"
        ) from exc


def resolvers(resolv_conf: str) -> tuple[str, ...]:
    """The non-loopback name servers a resolv.conf names (loopback is always allowed)."""
    found: list[str] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback:
                found.append(str(address))
    return tuple(dict.fromkeys(found))


def ruleset(allowlist: tuple[str, ...] | None, resolvers: Iterable[str] = ()) -> str:
    """The nft script that makes a namespace's egress what `allowlist` says (None: open), replacing
    whatever kiln's table held before in one transaction.

    DNS to `resolvers` (port 53, UDP and TCP) is always allowed: code written for Modal reaches
    its allowed services by name, and the resolver is this machine's own, chosen by its operator,
    not a destination the sandbox picks. The cost is that a sandbox can still send data out
    through DNS queries it makes; a sandbox that must send nothing out needs block_network=True.
    """
    # Creating the table first makes the delete succeed when it does not exist yet.
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    if allowlist is None:
        return "\n".join(lines) + "\n"
    networks = [ipaddress.ip_network(entry) for entry in allowlist]
    v4 = [str(n) for n in networks if n.version == 4]
    v6 = [str(n) for n in networks if n.version == 6]
    lines += [
        f"table inet {TABLE} {{",
        *_set("allowed4", "ipv4_addr", v4),
        *_set("allowed6", "ipv6_addr", v6),
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy drop;",
        '\t\toif "lo" accept',
        "\t\tct state established,related accept",
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
        "\t\tip daddr @allowed4 accept",
        "\t\tip6 daddr @allowed6 accept",
    ]
    for address in resolvers:
        family = "ip" if ipaddress.ip_address(address).version == 4 else "ip6"
        lines.append(f"\t\t{family} daddr {address} meta l4proto {{ tcp, udp }} th dport 53 accept")
    lines += [
        "\t\tmeta l4proto tcp reject with tcp reset",
        "\t\treject with icmpx admin-prohibited",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    # auto-merge: overlapping networks (10.0.0.0/8 and 10.1.0.0/16) are one interval, not an error.
    body = [f"\tset {name} {{", f"\t\ttype {kind}", "\t\tflags interval", "\t\tauto-merge"]
    if elements:
        body.append(f"\t\telements = {{ {', '.join(elements)} }}")
    return [*body, "\t}"]


def nft_binary() -> str:
    """Where `nft` is; SandboxUnavailable with the fix when this machine lacks it."""
    found = shutil.which("nft") or next(
        (path for path in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(path)), None
    )
    if found is None:
        raise SandboxUnavailable(
            "an outbound CIDR allowlist is enforced with nf_tables rules loaded by `nft`, which this "
            "machine lacks: `sudo apt-get install -y nftables` (or run scripts/install), or create the "
            "sandbox without outbound_cidr_allowlist"
        )
    return found
