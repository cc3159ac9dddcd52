"""Outbound CIDR allowlists of sandboxes, through the official client: what a sandbox can and
cannot connect to, from its entrypoint and its execs, before and after its policy is replaced,
and that its root cannot lift the filter.

The targets are real listeners of this machine on addresses a container reaches through pasta
like any remote host (the host's loopback is out of containers' reach by design): a throwaway
`ifb` interface of the host carries two IPv4 and two IPv6 addresses, each with a listener that
counts its connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import modal
import modal.exception
import pytest

from tests.conftest import APPS, KilnServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PROBE = (APPS / "egress_probe.py").read_text()
_N = os.getpid() % 250 + 1


@dataclass
class Target:
    """A listener on one address of the host: it greets each connection with its name."""

    name: str
    host: str
    sock: socket.socket
    accepted: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        port = self.sock.getsockname()[1]
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    @property
    def single(self) -> str:
        return f"{self.host}/{128 if ':' in self.host else 32}"

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(self.name.encode())


@dataclass
class Targets:
    a: Target  # IPv4, listed in the allowlists below
    b: Target  # IPv4, a different network
    a6: Target  # IPv6
    b6: Target

    @property
    def all(self) -> list[Target]:
        return [self.a, self.b, self.a6, self.b6]


@pytest.fixture(scope="module")
def targets() -> Iterator[Targets]:
    link = f"kegress{_N}"
    addresses = {
        "a": f"198.18.{_N}.1",
        "b": f"198.19.{_N}.1",
        "a6": f"fd6b:696c:6e00:{_N:x}::1",
        "b6": f"fd6b:696c:6e01:{_N:x}::1",
    }
    subprocess.run(["ip", "link", "add", link, "type", "ifb"], check=True)
    try:
        for host in addresses.values():
            if ":" in host:
                subprocess.run(["ip", "-6", "addr", "add", f"{host}/128", "dev", link, "nodad"], check=True)
            else:
                subprocess.run(["ip", "addr", "add", f"{host}/32", "dev", link], check=True)
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        made = {}
        for name, host in addresses.items():
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.bind((host, 0))
            sock.listen(16)
            target = Target(name, host, sock)
            target.thread = threading.Thread(target=target.serve, daemon=True)
            target.thread.start()
            made[name] = target
        yield Targets(**made)
        for target in made.values():
            with contextlib.suppress(OSError):
                target.sock.shutdown(socket.SHUT_RDWR)
            target.sock.close()
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)


@pytest.fixture(scope="module")
def app(kiln: KilnServer) -> Iterator[modal.App]:
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
            patch.setenv(key, kiln.env[key])
        yield modal.App.lookup("kiln-test-sandbox-egress", create_if_missing=True)


@pytest.fixture(scope="module")
def image(app: modal.App) -> modal.Image:
    # Debian's nft inside, to try what a sandbox's root would try.
    return modal.Image.debian_slim().apt_install("nftables")


def probe(sb: modal.Sandbox, targets: Targets) -> dict[str, str]:
    """What happens to a connection to each target from a new exec in `sb`: "ok" (the listener
    answered), an errno name, or "timeout"; a refusal must be immediate."""
    process = sb.exec("python", "-c", PROBE, *(t.address for t in targets.all))
    output = process.stdout.read()
    assert process.wait() == 0, process.stderr.read()
    return _outcomes(output, targets)


def _outcomes(output: str, targets: Targets) -> dict[str, str]:
    found = json.loads(output)
    outcomes = {}
    for target in targets.all:
        outcome, seconds = found[target.address]
        if outcome.startswith("ok:"):
            assert outcome == f"ok:{target.name}"
            outcome = "ok"
        else:
            assert seconds < 2, f"{target.name}: {outcome} took {seconds} s; a refusal should be at once"
        outcomes[target.name] = outcome
    return outcomes


OPEN = {"a": "ok", "b": "ok", "a6": "ok", "b6": "ok"}
ONLY_A = {"a": "ok", "b": "ECONNREFUSED", "a6": "ok", "b6": "ECONNREFUSED"}


def test_an_open_sandbox_reaches_every_target(app: modal.App, image: modal.Image, targets: Targets) -> None:
    """The control: without an allowlist every target answers, so a refusal below is the filter's."""
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        assert probe(sb, targets) == OPEN
    finally:
        sb.terminate()


def test_an_allowlisted_sandbox_connects_only_inside_its_networks_in_entrypoint_and_execs(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    refused_before = targets.b.accepted + targets.b6.accepted
    allowlist = [targets.a.single, f"{targets.a6.host.rsplit('::', 1)[0]}::/64"]
    script = PROBE + "\nimport time\ntime.sleep(600)\n"
    sb = modal.Sandbox.create(
        "python", "-c", script, *(t.address for t in targets.all),
        app=app, image=image, outbound_cidr_allowlist=allowlist,
    )  # fmt: skip
    try:
        assert _outcomes(next(iter(sb.stdout)), targets) == ONLY_A  # the entrypoint
        assert probe(sb, targets) == ONLY_A  # an exec
        assert probe(sb, targets) == ONLY_A  # and the next
    finally:
        sb.terminate()
    assert targets.b.accepted + targets.b6.accepted == refused_before  # nothing got through


def test_the_deprecated_cidr_allowlist_filters_too(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    with pytest.warns(modal.exception.DeprecationError):
        sb = modal.Sandbox.create(app=app, image=image, cidr_allowlist=[targets.b.single, targets.b6.single])
    try:
        assert probe(sb, targets) == {"a": "ECONNREFUSED", "b": "ok", "a6": "ECONNREFUSED", "b6": "ok"}
    finally:
        sb.terminate()


def test_the_sandboxs_root_cannot_flush_or_bypass_the_rules(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    sb = modal.Sandbox.create(app=app, image=image, outbound_cidr_allowlist=[targets.a.single])
    try:
        for command in (
            ["nft", "flush", "ruleset"],
            ["nft", "delete", "table", "inet", "kiln_egress"],
            ["nft", "add", "rule", "inet", "kiln_egress", "output", "accept"],
            ["nft", "list", "ruleset"],
        ):
            process = sb.exec(*command)
            assert process.wait() != 0, command
            assert "Operation not permitted" in process.stderr.read(), command
        whoami = sb.exec("sh", "-c", "id -u; grep CapEff /proc/self/status").stdout.read().split()
        assert whoami[0] == "0"  # root of the sandbox, and still
        effective = int(whoami[-1], 16)
        assert not effective & (1 << 12), "CAP_NET_ADMIN"
        assert not effective & (1 << 13), "CAP_NET_RAW: packet sockets pass every netfilter hook"
        packet = "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)"
        assert "PermissionError" in sb.exec("python", "-c", packet).stderr.read()
        assert probe(sb, targets) == {
            "a": "ok",
            "b": "ECONNREFUSED",
            "a6": "ECONNREFUSED",
            "b6": "ECONNREFUSED",
        }
    finally:
        sb.terminate()


def test_a_running_sandboxs_policy_is_replaced_live(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    sb = modal.Sandbox.create(app=app, image=image, outbound_cidr_allowlist=[])
    try:
        assert set(probe(sb, targets).values()) == {"ECONNREFUSED"}
        sb._experimental_set_outbound_network_policy(outbound_cidr_allowlist=[targets.b.single])
        assert probe(sb, targets) == {
            "a": "ECONNREFUSED",
            "b": "ok",
            "a6": "ECONNREFUSED",
            "b6": "ECONNREFUSED",
        }
        sb._experimental_set_outbound_network_policy()  # open
        assert probe(sb, targets) == OPEN
        sb._experimental_set_outbound_network_policy(
            outbound_cidr_allowlist=[targets.a.single, targets.a6.single]
        )
        assert probe(sb, targets) == ONLY_A
        with pytest.raises(modal.exception.InvalidError, match="'not-a-cidr'"):
            sb._experimental_set_outbound_network_policy(outbound_cidr_allowlist=["not-a-cidr"])
        assert probe(sb, targets) == ONLY_A  # a refused update changes nothing
    finally:
        sb.terminate()


def test_only_a_sandbox_made_with_an_allowlist_changes_its_policy(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        with pytest.raises(
            modal.exception.InvalidError, match=r"CAP_NET_RAW.*outbound_cidr_allowlist=\[\.\.\.\]"
        ):
            sb._experimental_set_outbound_network_policy(outbound_cidr_allowlist=[targets.a.single])
        assert probe(sb, targets) == OPEN
    finally:
        sb.terminate()


def test_block_network_still_has_no_network(app: modal.App, image: modal.Image, targets: Targets) -> None:
    sb = modal.Sandbox.create(app=app, image=image, block_network=True)
    try:
        assert set(probe(sb, targets).values()) == {"ENETUNREACH"}
        with pytest.raises(modal.exception.InvalidError, match="block_network=True has no network"):
            sb._experimental_set_outbound_network_policy(outbound_cidr_allowlist=[targets.a.single])
    finally:
        sb.terminate()


def test_dns_to_the_hosts_resolver_works_under_an_allowlist(
    app: modal.App, image: modal.Image, targets: Targets
) -> None:
    name = "deb.debian.org"  # what the image build's apt resolved
    try:
        socket.getaddrinfo(name, 80)
    except OSError:
        pytest.skip(f"this machine cannot resolve {name}")
    sb = modal.Sandbox.create(app=app, image=image, outbound_cidr_allowlist=[targets.a.single])
    try:
        lookup = sb.exec("python", "-c", f"import socket; print(socket.getaddrinfo({name!r}, 80)[0][4][0])")
        assert lookup.wait() == 0, lookup.stderr.read()
        assert lookup.stdout.read().strip()
    finally:
        sb.terminate()


def test_bad_allowlists_are_refused_naming_the_entry_or_the_fix(app: modal.App, image: modal.Image) -> None:
    with pytest.raises(modal.exception.InvalidError, match=r"'10\.1\.2\.3/8'.*'10\.0\.0\.0/8'"):
        modal.Sandbox.create(app=app, image=image, outbound_cidr_allowlist=["10.1.2.3/8"])
    with pytest.raises(modal.exception.Error, match="resolve the names"):
        modal.Sandbox.create(app=app, image=image, outbound_domain_allowlist=["api.example.com"])
