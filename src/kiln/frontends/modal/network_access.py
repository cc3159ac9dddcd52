"""The client's `NetworkAccess` (Sandbox.create's `outbound_cidr_allowlist` / `cidr_allowlist`,
and `Sandbox._experimental_set_outbound_network_policy`) as an egress allowlist."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.containers.egress import parse_allowlist
from kiln.errors import Unsupported

_ALLOWLIST = api_pb2.NetworkAccess.NetworkAccessType.ALLOWLIST


def outbound_allowlist(access: api_pb2.NetworkAccess) -> tuple[str, ...] | None:
    """The networks a sandbox may open connections to; None for any (OPEN, and BLOCKED, which
    the caller handles: no network at all). InvalidRequest names a bad CIDR."""
    if access.network_access_type != _ALLOWLIST:
        return None
    domains = list(access.allowed_domains)
    if "*" in domains:  # the client's "every domain": nothing is filtered
        return None
    if domains:
        raise Unsupported(
            f"kiln filters a sandbox's egress by address, not by name, so outbound_domain_allowlist "
            f"({', '.join(domains[:3])}{', …' if len(domains) > 3 else ''}) is not supported: resolve the "
            "names and pass their addresses as outbound_cidr_allowlist (a name served by a CDN changes "
            "addresses, so such a list can go stale), or leave egress open"
        )
    return parse_allowlist(access.allowed_cidrs)
