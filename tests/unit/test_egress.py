"""Egress allowlists: validation, the nft ruleset built from one (loaded into a real nf_tables
namespace), and the Modal client's NetworkAccess translated at the edge."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from modal_proto import api_pb2

from kiln.containers.egress import TABLE, nft_binary, parse_allowlist, resolvers, ruleset
from kiln.containers.exec import docker_cap_numbers
from kiln.errors import InvalidRequest, SandboxUnavailable, Unsupported
from kiln.frontends.modal.network_access import outbound_allowlist

_TYPE = api_pb2.NetworkAccess.NetworkAccessType


def test_an_allowlist_is_canonical_networks_in_order_without_repeats() -> None:
    entries = ["10.0.0.0/8", " 203.0.113.7 ", "2001:DB8::/32", "10.0.0.0/8", "::1"]
    assert parse_allowlist(entries) == ("10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32", "::1/128")
    assert parse_allowlist([]) == ()


@pytest.mark.parametrize("entry", ["example.com", "10.0.0.0/33", "300.1.2.3/32", "", "10.0.0.0/8/8"])
def test_an_entry_that_is_not_a_network_is_refused_by_name(entry: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_allowlist(["192.0.2.0/24", entry])
    assert repr(entry) in str(caught.value)
    assert "'10.0.0.0/8'" in str(caught.value)  # the form to write


def test_host_bits_beyond_the_prefix_are_refused_naming_both_readings() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_allowlist(["10.1.2.3/8"])
    message = str(caught.value)
    assert "'10.1.2.3/8'" in message and "'10.0.0.0/8'" in message and "'10.1.2.3/32'" in message


def test_the_resolvers_are_the_non_loopback_name_servers_of_resolv_conf() -> None:
    conf = (
        "# generated\nsearch example.internal\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
        "nameserver fe80::1%eth0\nnameserver ::1\nnameserver not-an-address\nnameserver 10.255.255.53\n"
        "options edns0\n"
    )
    assert resolvers(conf) == ("10.255.255.53", "fe80::1")


def test_no_allowlist_only_removes_kilns_table() -> None:
    assert ruleset(None, ["10.255.255.53"]) == f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def test_the_ruleset_drops_by_default_and_allows_each_family_its_networks_and_dns() -> None:
    text = ruleset(("10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"), ["10.255.255.53", "fd00::53"])
    assert text.startswith(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
    assert "policy drop;" in text
    assert "elements = { 10.0.0.0/8, 203.0.113.7/32 }" in text
    assert "elements = { 2001:db8::/32 }" in text
    assert "ip daddr 10.255.255.53 meta l4proto { tcp, udp } th dport 53 accept" in text
    assert "ip6 daddr fd00::53 meta l4proto { tcp, udp } th dport 53 accept" in text
    # Rejected, not dropped: a refused connection fails at once.
    assert text.rstrip().endswith("reject with icmpx admin-prohibited\n\t}\n}")
    assert "meta l4proto tcp reject with tcp reset" in text


def test_an_empty_allowlist_still_filters_with_empty_sets() -> None:
    text = ruleset((), [])
    assert "policy drop;" in text and "elements" not in text


def _nft_in_a_new_namespace(*scripts: str) -> str:
    """Load each script with the real nft, in turn, in a throwaway user+network namespace; the
    ruleset it ends with."""
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("needs nft (apt install nftables) and unshare")
    commands = [f"nft -f - <<'EOF'\n{script}EOF" for script in scripts]
    result = subprocess.run(
        ["unshare", "-Urn", "sh", "-ec", "\n".join([*commands, "nft list ruleset"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_real_nft_loads_the_ruleset_merging_overlaps_and_replaces_it_in_place() -> None:
    first = ruleset(("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"), ["10.255.255.53"])
    second = ruleset(("192.0.2.0/24",), [])
    loaded = _nft_in_a_new_namespace(first)
    assert "elements = { 10.0.0.0/8 }" in loaded  # the /16 inside the /8 merged, not an error
    assert "elements = { 2001:db8::/32 }" in loaded
    assert "policy drop;" in loaded
    replaced = _nft_in_a_new_namespace(first, second)
    assert "192.0.2.0/24" in replaced and "10.0.0.0/8" not in replaced
    assert replaced.count(f"table inet {TABLE}") == 1
    opened = _nft_in_a_new_namespace(first, ruleset(None))
    assert TABLE not in opened
    assert _nft_in_a_new_namespace(ruleset(None)).strip() == ""  # nothing to remove is no error


def test_a_filtered_containers_execs_lose_cap_net_raw_only() -> None:
    full, filtered = docker_cap_numbers(), docker_cap_numbers(filtered=True)
    assert 13 in full and set(full) - set(filtered) == {13}
    assert 12 not in full  # CAP_NET_ADMIN, which could change the rules, never


def test_the_clients_network_access_becomes_an_allowlist_or_none() -> None:
    def access(
        kind: api_pb2.NetworkAccess.NetworkAccessType.ValueType,
        cidrs: tuple[str, ...] = (),
        domains: tuple[str, ...] = (),
    ) -> api_pb2.NetworkAccess:
        return api_pb2.NetworkAccess(network_access_type=kind, allowed_cidrs=cidrs, allowed_domains=domains)

    assert outbound_allowlist(access(_TYPE.OPEN)) is None
    assert outbound_allowlist(access(_TYPE.UNSPECIFIED)) is None
    assert outbound_allowlist(access(_TYPE.ALLOWLIST)) == ()
    assert outbound_allowlist(access(_TYPE.ALLOWLIST, ("192.0.2.1",))) == ("192.0.2.1/32",)
    assert outbound_allowlist(access(_TYPE.ALLOWLIST, ("192.0.2.1",), ("*",))) is None
    with pytest.raises(Unsupported, match=r"api\.example\.com.*outbound_cidr_allowlist"):
        outbound_allowlist(access(_TYPE.ALLOWLIST, (), ("api.example.com",)))
    with pytest.raises(InvalidRequest, match="'nope'"):
        outbound_allowlist(access(_TYPE.ALLOWLIST, ("nope",)))


def test_a_machine_without_nft_refuses_an_allowlist_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(SandboxUnavailable, match=r"apt-get install -y nftables"):
        nft_binary()
