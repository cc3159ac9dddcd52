"""Running another command in a running container (a sandbox's `exec`), confined exactly as the
container's own command is.

The sandbox helper's enter mode (`namespaces.py --enter`) joins the container's cgroups and
namespaces (user, mount, PID, network, IPC, UTS, cgroup: those of bubblewrap's PID 1 inside it),
chroots to that process's root, becomes root of the container's user namespace (host 100000),
keeps Docker's capability set, sets no_new_privs and loads the same seccomp filter, then execs.
Nothing of the image is needed (no agent, no Python inside): the helper is the host's Python,
and only the command runs from the container's root. The environment, secrets among them,
travels on a descriptor, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers.bubblewrap import DOCKER_CAPS
from kiln.containers.container import Container
from kiln.containers.egress import CAP_BYPASSING_FILTERS
from kiln.containers.seccomp import filter_bpf
from kiln.errors import ContainerStartError, SandboxUnavailable

_HELPER = Path(__file__).with_name("namespaces.py")
_CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}  # fmt: skip
# How long an exec waits for a just-started container to finish setting up its root.
_SETUP_WAIT = 10.0


@dataclass
class ExecSpec:
    """A command to run in a running container. `stdout`/`stderr` are "pipe", "devnull" or (for
    stderr) "stdout"; with `pty` all three are one pseudo-terminal of the container's own (its
    devpts: `tty` inside names it), whose master side `ExecProcess.terminal` holds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    stdout: str = "pipe"
    stderr: str = "pipe"
    pty: bool = False
    # "fs_tools": instead of a program of the image, kiln's filesystem tool runs (argv[1] is its
    # JSON command), under the same confinement.
    tool: str = ""


def docker_cap_numbers(filtered: bool = False) -> list[int]:
    """Docker's capabilities; without CAP_NET_RAW in a container whose egress is `filtered`."""
    return sorted(
        _CAP_NUMBERS[name] for name in DOCKER_CAPS if not (filtered and name == CAP_BYPASSING_FILTERS)
    )


class ExecProcess:
    """A command running in a container: its stdio (pipes; with a pty, the terminal's master
    side in `terminal` and only the helper's own errors on stderr), its exit, and `kill()`."""

    def __init__(self, server: ExecServer, key: int) -> None:
        self._server = server
        self.key = key
        self.pid = 0  # on the host
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self.terminal: int | None = None
        self.returncode: int | None = None  # -N: killed by signal N, as asyncio reports it
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        if self.returncode is None:
            self._server.send({"op": "kill", "key": self.key, "signal": signal.SIGKILL})


class ExecServer:
    """One container's exec server (`namespaces.py --serve`): prepared once per container, it
    forks each exec from there, without a new interpreter per exec."""

    def __init__(self, process: asyncio.subprocess.Process, channel: socket.socket) -> None:
        self.process = process
        self._channel = channel
        self._keys = itertools.count(1)
        self._execs: dict[int, ExecProcess] = {}
        self._started: dict[int, asyncio.Future[None]] = {}
        self._answers: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, container: Container, server_pid: int | None = None) -> ExecServer:
        """Start it as the container starts: it finds the container's init itself, once the
        container's root is set up (its own start overlaps the container's)."""
        fds: list[int] = []
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds.append(theirs.detach())
            plan = {
                "server_pid": server_pid or os.getpid(),
                "helper": container.pid,
                "cgroup_procs": container.cgroup.procs_files if container.cgroup else [],
                "seccomp": f"/proc/self/fd/{_memfd('kiln-seccomp', filter_bpf(), fds)}",
                "caps": docker_cap_numbers(filtered=container.egress is not None),
                "channel": fds[0],
            }
            plan_fd = _memfd("kiln-exec", json.dumps(plan).encode(), fds)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(_HELPER), "--serve", str(plan_fd),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG")},
                start_new_session=True, pass_fds=fds,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        ours.setblocking(False)
        return cls(process, ours)

    def send(self, message: dict[str, object], fds: list[int] | None = None) -> None:
        socket.send_fds(self._channel, [json.dumps(message).encode()], fds or [])

    async def run(self, spec: ExecSpec, stdin: int | None = None) -> ExecProcess:
        """Start `spec`; returns once the command's process exists (and, for a pty, its
        terminal is open). `stdin`: a descriptor of kiln's to give the command as its stdin
        (a tool's output directory) instead of a pipe."""
        loop = asyncio.get_running_loop()
        run = ExecProcess(self, next(self._keys))
        ours: list[int] = []  # the child's ends, closed here once sent
        terminal_socket: socket.socket | None = None

        def pipe() -> tuple[int, int]:
            r, w = os.pipe2(os.O_CLOEXEC)
            ours.extend((r, w))
            return r, w

        try:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            ours.append(null)
            if spec.pty:
                terminal_socket, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                child_fd = child.detach()
                ours.append(child_fd)
                errors_r, errors_w = pipe()
                ours.remove(errors_r)
                run.stderr = await _reader(loop, errors_r)
                fds = [null, null, errors_w, child_fd]
            else:
                if stdin is None:
                    stdin_r, stdin_w = pipe()
                    ours.remove(stdin_w)
                    run.stdin = await _writer(loop, stdin_w)
                else:
                    stdin_r = stdin
                stdout = stderr = null
                if spec.stdout != "devnull":
                    out_r, stdout = pipe()
                    ours.remove(out_r)
                    run.stdout = await _reader(loop, out_r)
                if spec.stderr == "stdout":
                    stderr = stdout
                elif spec.stderr != "devnull":
                    err_r, stderr = pipe()
                    ours.remove(err_r)
                    run.stderr = await _reader(loop, err_r)
                fds = [stdin_r, stdout, stderr]
            started: asyncio.Future[None] = loop.create_future()
            self._started[run.key] = started
            self._execs[run.key] = run
            request = {
                "op": "exec", "key": run.key, "argv": spec.argv, "env": spec.env, "cwd": spec.cwd,
                "tool": spec.tool, "pty": spec.pty,
            }  # fmt: skip
            self.send(request, fds)
        finally:
            for fd in ours:
                with contextlib.suppress(OSError):
                    os.close(fd)
        try:
            await asyncio.wait_for(started, _SETUP_WAIT)
            if terminal_socket is not None:
                run.terminal = await asyncio.to_thread(_receive_terminal, terminal_socket)
        except BaseException:
            run.kill()
            raise
        return run

    async def netfilter(self, nft: str, rules: str) -> None:
        """Load `rules` (an nft script) into the container's network namespace; it replaces the
        container's egress rules in one transaction."""
        await self._ask({"op": "netfilter", "nft": nft, "rules": rules})

    async def mount(self, path: str, lower: list[Path], upper: Path, work: Path) -> tuple[int, int]:
        """Mount an overlay of `lower` (host directories, topmost first; read-only to the
        container) with `upper`/`work` at `path` *inside* the container (its mount namespace,
        resolved from its root); returns the mount root's (device, inode)."""
        answer = await self._ask(
            {
                "op": "mount",
                "path": path,
                "lower": [str(p) for p in lower],
                "upper": str(upper),
                "work": str(work),
            }
        )
        return int(str(answer["dev"])), int(str(answer["ino"]))

    async def unmount(self, path: str, mounted: tuple[int, int]) -> None:
        """Detach the mount at `path` inside the container, if it is still `mounted` (device, inode)."""
        await self._ask({"op": "unmount", "path": path, "dev": mounted[0], "ino": mounted[1]})

    async def _ask(self, request: dict[str, object]) -> dict[str, object]:
        key = next(self._keys)
        answer: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._answers[key] = answer
        try:
            self.send({**request, "key": key})
            result = await asyncio.wait_for(answer, _SETUP_WAIT)
        finally:
            self._answers.pop(key, None)
        if result["error"]:
            raise SandboxUnavailable(str(result["error"]))
        return result

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while message := await loop.sock_recv(self._channel, 65536):
                news = json.loads(message)
                if "started" in news:
                    self._execs[news["started"]].pid = news["pid"]
                    self._resolve(news["started"], None)
                elif "failed" in news:
                    self._resolve(news["failed"], ContainerStartError(news["error"]))
                    self._finish(news["failed"], 126)
                elif "answer" in news:  # to a request of `_ask`
                    waiting = self._answers.get(news["answer"])
                    if waiting is not None and not waiting.done():
                        waiting.set_result(news)
                elif "exited" in news:
                    self._finish(news["exited"], news["code"] if "code" in news else -news["signal"])
        except (OSError, ValueError):
            pass
        for waiting in self._answers.values():
            if not waiting.done():
                waiting.set_exception(ContainerStartError("the sandbox has ended"))
        for key in list(self._execs):  # the exec server is gone, and its children with it
            self._resolve(key, ContainerStartError("the sandbox has ended"))
            self._finish(key, -signal.SIGKILL)

    def _resolve(self, key: int, error: BaseException | None) -> None:
        started = self._started.pop(key, None)
        if started is not None and not started.done():
            if error is None:
                started.set_result(None)
            else:
                started.set_exception(error)

    def _finish(self, key: int, returncode: int) -> None:
        run = self._execs.pop(key, None)
        if run is not None and not run.exited.done():
            run.returncode = returncode
            run.exited.set_result(returncode)

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        # Its reader ends (failing whatever still waits) before the channel is closed: a socket
        # closed while the loop still watches it for a read leaves a watcher on a dead descriptor,
        # and the next pipe given that number fails with EEXIST ("File exists").
        await asyncio.wait({self._reader}, timeout=1.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._channel.close()


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return reader


async def _writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _receive_terminal(sock: socket.socket) -> int | None:
    """The master side the helper sends once the command's terminal is open (None if it failed
    first: its error is on the helper's stderr)."""
    with sock:
        sock.settimeout(_SETUP_WAIT)
        try:
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        except OSError:
            return None
    return fds[0] if fds else None


def _memfd(name: str, data: bytes, fds: list[int]) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    fds.append(fd)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
