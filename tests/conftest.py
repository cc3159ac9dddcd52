"""Shared fixtures: a real kiln server (a subprocess on loopback) and the official client.

The server's home (layers, blobs) persists in tests/.kiln-home between sessions so that image
layers are built once; layers are content-addressed, so reuse cannot change an outcome.
Set KILN_TEST_HOME to use another directory.

Tests that kill their server take `restartable_server`: a server of their own, on a KILN_HOME of
their own that shares the image caches above, restartable on the same port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from grpclib.client import Channel
from modal_proto.api_grpc import ModalClientStub

# A suite started in the background of a non-interactive shell (as CI may run it) inherits SIGINT
# ignored, and so would every client it starts: `modal serve` and `fal run` would then ignore the
# Ctrl-C the tests send them. Give the test process a handler, so that its children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
TEST_HOME = Path(os.environ.get("KILN_TEST_HOME", TESTS / ".kiln-home"))


@dataclass
class KilnServer:
    url: str
    home: Path
    process: subprocess.Popen[str]
    log_path: Path
    log_file: IO[str]
    token_id: str
    token_secret: str
    fal_exports: dict[str, str] = field(default_factory=dict)  # what `kiln server` prints for fal

    @property
    def fal_env(self) -> dict[str, str]:
        """Environment for the official fal client: this server's hosts and key."""
        return {**os.environ, **self.fal_exports, "FAL_CONFIG_PATH": str(self.home / "fal.toml")}

    @property
    def env(self) -> dict[str, str]:
        """Environment for the official client: this server instead of Modal."""
        config = self.home / "modal.toml"
        return {
            **os.environ,
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_CONFIG_PATH": str(config),
            "PYTHONPATH": str(APPS),
        }

    @property
    def metadata(self) -> dict[str, str]:
        """The gRPC metadata a raw request needs: this server's token pair."""
        return {"x-modal-token-id": self.token_id, "x-modal-token-secret": self.token_secret}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# Hands listening sockets to `kiln server` as systemd socket activation does: as descriptors 3, 4…
# with LISTEN_FDS, and LISTEN_PID naming the process that execs into the server.
_SOCKET_ACTIVATION_SHIM = (
    "import os, sys\n"
    "fds = [int(fd) for fd in sys.argv[1].split(',')]\n"
    "for n, fd in enumerate(fds):\n"
    "    os.dup2(fd, 3 + n)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)))\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)


def start_server(
    home: Path,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    port: int = 0,
    sockets: list[socket.socket] | None = None,
) -> KilnServer:
    """A `kiln server` subprocess; with `sockets`, it serves on those (gRPC, HTTP) instead of
    binding its own, as under a supervisor that keeps them open across restarts."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "modal.toml").touch()
    log_file = open(log_path, "w")
    argv = [sys.executable, "-m", "kiln.cli.main", "server", "--port", str(port)]
    fds = [sock.fileno() for sock in sockets or []]
    if fds:
        argv = [sys.executable, "-c", _SOCKET_ACTIVATION_SHIM, ",".join(map(str, fds)), *argv[1:]]
    process = subprocess.Popen(
        argv,
        env={**os.environ, "KILN_HOME": str(home), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        pass_fds=fds,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    exports: dict[str, str] = {}
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"export ((?:MODAL|FAL|ISOLATE|SSL)_\w+)=(\S+)", line)
        if match:
            exports[match.group(1)] = match.group(2)
        if "FAL_RUN_HOST" in exports:  # the last line of the exports
            break
    url = exports.get("MODAL_SERVER_URL")
    if url is None or "MODAL_TOKEN_SECRET" not in exports:
        process.kill()
        process.wait()
        process.stdout.close()
        log_file.close()
        raise RuntimeError(f"kiln server did not start:\n{log_path.read_text()}")
    fal = {k: v for k, v in exports.items() if not k.startswith("MODAL_")}
    return KilnServer(
        url, home, process, log_path, log_file, exports["MODAL_TOKEN_ID"], exports["MODAL_TOKEN_SECRET"], fal
    )


@contextlib.asynccontextmanager
async def raw_stub(server: KilnServer) -> AsyncIterator[ModalClientStub]:
    """A raw grpclib stub on the server's port (requests carry whatever metadata a test passes)."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        yield ModalClientStub(channel)
    finally:
        channel.close()


def stop_server(server: KilnServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.process.stdout is not None:
        server.process.stdout.close()
    server.log_file.close()


@pytest.fixture(scope="session")
def kiln(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """One kiln server for the session."""
    log_path = tmp_path_factory.mktemp("kiln") / "server.log"
    server = start_server(TEST_HOME, log_path)
    yield server
    stop_server(server)


def run_modal(
    kiln: KilnServer, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`modal <args>` with the official client, as a user would type it (cwd: tests/apps)."""
    return subprocess.run(
        [sys.executable, "-m", "modal", *args],
        cwd=APPS,
        env={**kiln.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def modal_client(kiln: KilnServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the in-process official client at the kiln server (for the Python API)."""
    for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
        monkeypatch.setenv(key, kiln.env[key])
    monkeypatch.syspath_prepend(str(APPS))


def run_client(
    kiln: KilnServer, script: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A Python script that uses the official client's API, in a process of its own (cwd: tests/apps):
    nothing of the client (its cached channel, its app) outlives the script."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=APPS,
        env={**kiln.env, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def gone_after_heartbeats(lookup: str) -> str:
    """Script lines that poll `lookup` (a statement raising NotFoundError once the ephemeral
    object is gone) for up to 30 s, and say when it went."""
    return (
        "started = time.monotonic()\n"
        "while time.monotonic() - started < 30:\n"
        "    try:\n"
        f"        {lookup}\n"
        "    except modal.exception.NotFoundError:\n"
        '        print("gone after its heartbeats stopped")\n'
        "        break\n"
        "    time.sleep(0.5)\n"
    )


def check_ephemeral_lifetime(server: RestartableServer, script: str) -> None:
    """Run `script` (which prints "kept alive", then polls with `gone_after_heartbeats`) on a server
    whose ephemeral objects live 2 s without a heartbeat."""
    server.restart({"KILN_EPHEMERAL_OBJECT_GRACE": "2"})
    result = run_client(server.server, script)
    output = result.stdout + result.stderr
    assert "kept alive" in result.stdout, output
    assert "gone after its heartbeats stopped" in result.stdout, output


def survives_kill_9(server: RestartableServer, write: str, read: str, *args: str) -> str:
    """Run the `write` script, kill the server with SIGKILL, restart it, run the `read` script;
    returns what `read` printed (each script must succeed; `write` prints "written")."""
    written = run_client(server.server, write, *args)
    assert "written" in written.stdout, written.stdout + written.stderr
    server.kill_9()
    server.restart()
    result = run_client(server.server, read, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A process is its pid and its start time (field 22 of /proc/PID/stat): pids are reused.
Process = tuple[int, str]


def _proc_table() -> dict[Process, tuple[int, str]]:
    """Every process: (pid, start time) → (parent pid, command name)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[(int(entry.name), fields[19])] = (int(fields[1]), name)
    return table


def process_tree(pid: int) -> dict[Process, str]:
    """The processes below `pid` (containers, builds, …) → their command names."""
    table = _proc_table()
    children: dict[int, list[Process]] = {}
    for process, (parent, _) in table.items():
        children.setdefault(parent, []).append(process)
    found: dict[Process, str] = {}
    frontier = [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                frontier.append(child[0])
    return found


def survivors(processes: dict[Process, str], grace: float) -> dict[Process, str]:
    """Those of `processes` still alive after up to `grace` seconds; then killed, so none stays."""
    deadline = time.monotonic() + grace
    while True:
        table = _proc_table()
        alive = {p: name for p, name in processes.items() if p in table}
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


# What a test server may share with the session's home: content-addressed (image layers, base root
# filesystems, the client's runtime deps, package caches) and safe for several servers at once.
SHARED_CACHES = ("layers", "bases", "deps", "cache")


class RestartableServer:
    """A kiln server of one test's own, for tests that kill it: a fresh KILN_HOME (its state is the
    test's alone) on a fixed gRPC port, so that a restart answers at the same MODAL_SERVER_URL and
    clients reconnect. The home shares the image caches of TEST_HOME, so nothing is rebuilt."""

    def __init__(self, home: Path, logs: Path, port: int | None = None, hold_sockets: bool = False) -> None:
        self.home = home
        self.logs = logs
        self.port = port or free_port()
        # With `hold_sockets`, this object keeps the listening sockets (as systemd would) and
        # hands them to every incarnation: while none runs, connections wait in the backlog.
        self.sockets = [_listen(self.port), _listen(0)] if hold_sockets else []
        self.incarnations: list[KilnServer] = []
        home.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        for name in SHARED_CACHES:
            (TEST_HOME / name).mkdir(parents=True, exist_ok=True)
            if not (home / name).exists():
                (home / name).symlink_to((TEST_HOME / name).resolve(), target_is_directory=True)

    @property
    def server(self) -> KilnServer:
        """The running incarnation (for `run_modal`, `run_client`)."""
        return self.incarnations[-1]

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> KilnServer:
        log_path = self.logs / f"server-{len(self.incarnations)}.log"
        server = start_server(self.home, log_path, extra_env, port=self.port, sockets=self.sockets)
        assert server.url == self.url, f"expected the server on {self.url}, it printed {server.url}"
        self.incarnations.append(server)
        return server

    def alive(self) -> bool:
        return bool(self.incarnations) and self.server.process.poll() is None

    def kill_9(self, grace: float = 5) -> dict[Process, str]:
        """SIGKILL the server process alone, as a crash would. Its containers should die with it:
        returns those of its processes still alive `grace` seconds later (and kills them)."""
        server = self.server
        below = process_tree(server.process.pid)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        _close(server)
        return survivors(below, grace)

    def restart(self, extra_env: dict[str, str] | None = None) -> KilnServer:
        """Start again on the same home and port (stopping the running server first, if any)."""
        if self.alive():
            self.stop()
        return self.start(extra_env)

    def stop(self) -> None:
        if not self.incarnations or self.server.log_file.closed:
            return
        below = process_tree(self.server.process.pid)
        stop_server(self.server)
        survivors(below, 5)

    def close(self) -> None:
        """Stop the server and let go of the sockets held for it."""
        self.stop()
        for sock in self.sockets:
            sock.close()

    def log(self) -> str:
        """Every incarnation's log, in order."""
        return "".join(f"----- {server.log_path.name} -----\n{server.log()}" for server in self.incarnations)


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def _close(server: KilnServer) -> None:
    if server.process.stdout is not None:
        server.process.stdout.close()
    server.log_file.close()


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[RestartableServer]:
    """A running kiln server of this test's own, which it may `kill_9()` and `restart()`."""
    server = RestartableServer(tmp_path / "home", tmp_path / "logs")
    server.start()
    yield server
    server.close()


@pytest.fixture
def supervised_server(tmp_path: Path) -> Iterator[RestartableServer]:
    """Like `restartable_server`, but its listening sockets are held open across restarts (as
    under systemd socket activation)."""
    server = RestartableServer(tmp_path / "home", tmp_path / "logs", hold_sockets=True)
    server.start()
    yield server
    server.close()
