"""Escapes tried from inside a function, each of which must fail; ordinary work must not.

The attacks are those that worked before containers were unprivileged (issue 8): mounting
filesystems, a cgroup v1 `release_agent`, device nodes of the host's disk, the host's
/etc/shadow, the host's loopback services (kiln's own port among them), a fork storm, nested
user namespaces; and secrets visible in `ps`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import pytest

from kiln.containers import BubblewrapRuntime, ContainerSpec, PortForward
from kiln.images.layer_store import LayerStore
from tests.conftest import APPS, KilnServer, free_port, process_tree

pytestmark = pytest.mark.e2e

SECRET = f"kiln-escape-{uuid.uuid4().hex}"
CONTAINER_UID = 100000


@pytest.fixture(scope="module")
def escape_app(kiln: KilnServer) -> Iterator[ModuleType]:
    """The app, running for the whole module (one image build, warm containers)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
            patch.setenv(key, kiln.env[key])
        patch.setenv("KILN_ESCAPE_SECRET", SECRET)
        patch.syspath_prepend(str(APPS))
        module = importlib.import_module("escape_app")
        with module.app.run():
            yield module


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A service on the host's loopback, recording whatever reaches it."""
    received: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                received.append(conn.recv(100) or b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], received
    stop.set()
    thread.join()
    sock.close()


@pytest.mark.timeout(600)
def test_mounting_a_tmpfs_or_sysfs_is_denied(escape_app: ModuleType) -> None:
    assert escape_app.mount_tmpfs.remote() == "EPERM"
    assert escape_app.mount_sysfs.remote() == "EPERM"


def test_no_cgroup_hierarchy_can_be_mounted_nor_a_release_agent_set(escape_app: ModuleType) -> None:
    results = escape_app.cgroup_release_agent.remote()
    assert all(value == "EPERM" for value in results.values()), results


def test_a_device_node_of_the_hosts_disk_cannot_be_made(escape_app: ModuleType) -> None:
    device = os.stat("/").st_dev
    result = escape_app.mknod_disk.remote(os.major(device), os.minor(device))
    assert result == "EPERM", result


def test_etc_shadow_is_the_images_own_not_the_hosts(escape_app: ModuleType) -> None:
    inside = escape_app.read_shadow.remote()
    host = Path("/etc/shadow").read_text()
    assert inside != host
    assert inside.startswith("root:*:") or inside.startswith("root:!"), inside[:40]
    host_root = next(line for line in host.splitlines() if line.startswith("root:"))
    assert host_root not in inside


def test_kilns_own_port_and_host_loopback_services_are_unreachable(
    escape_app: ModuleType, kiln: KilnServer, listener: tuple[int, list[bytes]]
) -> None:
    port, received = listener
    kiln_port = urlparse(kiln.url).port
    assert kiln_port is not None
    for host, target in (
        ("127.0.0.1", kiln_port),
        ("127.0.0.1", port),
        ("gateway", kiln_port),
        ("gateway", port),
    ):
        result = escape_app.connect.remote(host, target)
        assert not result.startswith("connected"), result
    assert received == []


def test_a_fork_storm_stops_at_the_pids_limit(escape_app: ModuleType) -> None:
    result = escape_app.fork_storm.remote(3000)
    assert result["error"], result  # the kernel refused before 3000
    assert 1500 < result["started"] < 2048, result  # kiln's default: 2048 tasks per container


def test_every_container_gets_a_pids_limit_and_a_memory_ceiling(
    escape_app: ModuleType, kiln: KilnServer
) -> None:
    escape_app.nested_userns.remote()  # a container of this app is running now
    cgroups = Path("/sys/fs/cgroup")
    v2 = (cgroups / "cgroup.controllers").exists()
    pids = cgroups if v2 else cgroups / "pids"
    memory = cgroups if v2 else cgroups / "memory"
    groups = list((pids / "kiln" / str(kiln.process.pid)).glob("*/pids.max"))
    assert groups, "no container of this server has a pids group"
    assert all(group.read_text().strip() == "2048" for group in groups)
    limits = [
        int(path.read_text().split()[0])
        for path in (memory / "kiln" / str(kiln.process.pid)).glob(
            "*/memory.max" if v2 else "*/memory.limit_in_bytes"
        )
    ]
    half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2 * 2**20
    assert half in limits, (limits, half)  # functions without memory= get half the machine


def test_a_nested_user_namespace_cannot_be_made(escape_app: ModuleType) -> None:
    result = escape_app.nested_userns.remote()
    assert result["unshare"] == "EPERM", result
    assert result["unshare(1)"] != "0", result


def test_files_and_processes_of_a_container_belong_to_an_unprivileged_host_uid(
    escape_app: ModuleType, kiln: KilnServer
) -> None:
    name = f"marker-{uuid.uuid4().hex}"
    assert escape_app.write_marker.remote(name) == "uid 0"  # root inside
    found = list((kiln.home / "run").glob(f"*/*/upper/root/{name}"))
    assert found, "the marker is not in any running container's upper directory"
    assert found[0].stat().st_uid == CONTAINER_UID
    entrypoints = [  # this server's containers (other servers may run on this machine)
        pid
        for pid, _ in process_tree(kiln.process.pid)
        if b"modal._container_entrypoint" in _read(Path(f"/proc/{pid}/cmdline"))
    ]
    assert entrypoints
    for pid in entrypoints:
        uid_line = next(
            line
            for line in _read(Path(f"/proc/{pid}/status")).decode().splitlines()
            if line.startswith("Uid:")
        )
        assert uid_line.split()[1:] == [str(CONTAINER_UID)] * 4, uid_line


def test_secrets_reach_the_container_but_no_command_line(escape_app: ModuleType) -> None:
    assert escape_app.secret_value.remote() == SECRET
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            assert SECRET.encode() not in _read(proc / "cmdline"), _read(proc / "cmdline")[:200]


def test_ordinary_work_still_works(escape_app: ModuleType) -> None:
    result = escape_app.normal.remote()
    assert result["six"] == "six" and result["built"] == "built" and result["own_source"], result
    if isinstance(result["index"], str):
        pytest.skip(f"the package index is not reachable from this machine: {result['index']}")
    assert result["index"] == 200


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


# The runtime itself, on the escape app's image: what Sandboxes and web servers will use.


def _run_in_sandbox(home: Path, command: str, **spec_options: object) -> tuple[int | None, str]:
    """Run `command` (Python) in a container over the escape app's image; (exit code, output)."""
    store = LayerStore(home / "layers")
    top = next(layer for layer in store.all() if layer.step == "RUN echo built > /built.txt")
    scratch = home / "run" / f"test-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    runtime = BubblewrapRuntime(scratch, home, lambda layer: store.fs_path(layer.key))
    output: list[bytes] = []

    async def run() -> int | None:
        spec = ContainerSpec(
            store.image_layers(top.key),
            ["python", "-c", command],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            **spec_options,  # type: ignore[arg-type]
        )
        container = await runtime.start(spec, lambda fd, data: output.append(data))
        try:
            status = await asyncio.wait_for(container.wait(), 60)
        finally:
            await runtime.shutdown()
        return status.code

    try:
        code = asyncio.run(run())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return code, b"".join(output).decode(errors="replace")


_NO_NETWORK = """
import socket
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
socket.create_connection(server.getsockname(), timeout=2).close()
print("loopback ok")
try:
    socket.create_connection(("pypi.org", 443), timeout=3)
    print("outside reached")
except OSError as exc:
    print("outside:", type(exc).__name__)
"""


def test_a_container_without_network_has_only_its_own_loopback(
    escape_app: ModuleType, kiln: KilnServer
) -> None:
    code, output = _run_in_sandbox(kiln.home, _NO_NETWORK, network=False)
    assert code == 0, output
    assert "['lo']" in output and "loopback ok" in output, output
    assert "outside reached" not in output and "outside: " in output, output


def test_the_server_reaches_a_port_inside_through_a_loopback_forward(
    escape_app: ModuleType, kiln: KilnServer
) -> None:
    host_port = free_port()
    command = (
        "import http.server, threading, time\n"
        "server = http.server.HTTPServer(('0.0.0.0', 8000), http.server.SimpleHTTPRequestHandler)\n"
        "threading.Timer(15, server.shutdown).start()\n"
        "server.serve_forever()\n"
    )
    results: list[object] = []

    def fetch() -> None:
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/built.txt", timeout=2) as response:
                    results.append(response.status)
                    return
            except OSError as exc:
                results.append(repr(exc))
                time.sleep(0.3)

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    _run_in_sandbox(kiln.home, command, forwards=[PortForward(host_port, 8000)])
    fetcher.join()
    assert results and results[-1] == 200, results
