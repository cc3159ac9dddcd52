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
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers.bubblewrap import DOCKER_CAPS
from kiln.containers.container import Container
from kiln.containers.seccomp import filter_bpf
from kiln.errors import ContainerStartError

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
    devpts: `tty` inside names it), whose master side `start_exec` returns."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    stdout: str = "pipe"
    stderr: str = "pipe"
    pty: bool = False
    # "fs_tools": instead of a program of the image, kiln's filesystem tool runs (argv[1] is its
    # JSON command), under the same confinement.
    tool: str = ""


def docker_cap_numbers() -> list[int]:
    return sorted(_CAP_NUMBERS[name] for name in DOCKER_CAPS)


@dataclass
class Started:
    """A started exec: the helper process (its pipes are the command's stdio; with a pty, its
    stderr carries only the helper's own errors) and, for a pty, the terminal's master side."""

    process: asyncio.subprocess.Process
    terminal: int | None = None


async def start_exec(container: Container, spec: ExecSpec, server_pid: int | None = None) -> Started:
    """Start `spec` inside `container`. The helper exits with the command's code (128 + N for a
    signal); killing its process group ends the command."""
    target = await container_init(container)
    fds: list[int] = []
    try:
        seccomp = _memfd("kiln-seccomp", filter_bpf(), fds)
        plan = {
            "server_pid": server_pid or os.getpid(),
            "target": target,
            "cgroup_procs": container.cgroup.procs_files if container.cgroup else [],
            "seccomp": f"/proc/self/fd/{seccomp}",
            "caps": docker_cap_numbers(),
            "argv": spec.argv,
            "env": spec.env,
            "cwd": spec.cwd,
            "pty": -1,
            "tool": spec.tool,
        }
        ours: socket.socket | None = None
        if spec.pty:
            # The terminal is opened inside, by the command's own confinement, on the container's
            # devpts; its master side comes back over this socket.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fds.append(theirs.detach())
            plan["pty"] = fds[-1]
        plan_fd = _memfd("kiln-exec", json.dumps(plan).encode(), fds)
        devnull = asyncio.subprocess.DEVNULL
        pipe = asyncio.subprocess.PIPE
        if spec.pty:
            stdin: int = devnull
            stdout: int = devnull
            stderr: int = pipe
        else:
            stdin = pipe
            stdout = devnull if spec.stdout == "devnull" else pipe
            stderr = {"devnull": devnull, "stdout": asyncio.subprocess.STDOUT}.get(spec.stderr, pipe)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(_HELPER), "--enter", str(plan_fd),
            stdin=stdin, stdout=stdout, stderr=stderr,
            env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG")},
            start_new_session=True,
            pass_fds=fds,
        )  # fmt: skip
        if ours is None:
            return Started(process)
        for fd in fds:  # the helper has its copies; ours must close for EOF to reach us
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()
        terminal = await asyncio.to_thread(_receive_terminal, ours)
        return Started(process, terminal)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


async def container_init(container: Container) -> int:
    """The host pid of the container's PID 1 (bubblewrap's init), once it has set up the
    container's root (it has started the command). Cached on the container."""
    cached: int | None = getattr(container, "_init_pid", None)
    if cached is not None and container.status is None:
        return cached
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETUP_WAIT
    while True:
        if container.status is not None or container.process.returncode is not None:
            raise ContainerStartError("the sandbox has ended: nothing more can run in it")
        init = _descendant(container.pid, 2)
        if init is not None and _children(init):
            container._init_pid = init  # type: ignore[attr-defined]
            return init
        if loop.time() > deadline:
            raise ContainerStartError("the sandbox did not finish starting within 10 s")
        await asyncio.sleep(0.005)


def _descendant(pid: int, depth: int) -> int | None:
    for _ in range(depth):
        children = _children(pid)
        if not children:
            return None
        pid = min(children)
    return pid


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


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
