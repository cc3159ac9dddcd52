"""The sandbox helper: puts a container in its own user namespace, then becomes bubblewrap.

Run as `python -I -S namespaces.py PLAN_FD` by the runtime (as root), in the container's own
session. The plan (JSON on a descriptor, never on the command line) says which cgroups to join,
which ids to map, how to mount the overlay and whether to start pasta. Then:

1. join the container's cgroups (everything it runs is limited from here on);
2. fork; the child drops to the unprivileged host ids (100000…) and creates a user namespace,
   which the parent (still root) maps `0 100000 65536`; the child becomes root *inside* it:
   it holds capabilities only over that namespace and what it writes is owned by host 100000;
3. the child makes its mount and network namespaces, mounts the overlay (`userxattr`: the
   namespace cannot write `trusted.*` attributes) and the binds, and waits;
4. the parent starts pasta on the child's network namespace (as the unprivileged id, with no
   way back to the host's loopback) and lets the child exec bubblewrap, whose arguments
   (environment included) come from a descriptor too;
5. the parent waits for the child, stops pasta (it does not exit by itself) and exits with the
   child's status.

The overlay is mounted on a fixed, empty mount point (`/run/kiln-sandbox`: in the child's
private mount namespace, so every container can use it) with layer paths relative to kiln's home,
the helper's working directory: its parents (e.g. /root) need not be open to the unprivileged ids.
Everything is imported up front: once the child is an unprivileged id it may not be able to read
the interpreter's own library (a pyenv under /root).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(flags: int, what: str) -> None:
    _check(_libc.unshare(flags), what)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        f"mount {fstype or 'bind'} on {target}",
    )


def _become(uid: int, gid: int) -> None:
    os.setresgid(gid, gid, gid)
    os.setgroups([])
    os.setresuid(uid, uid, uid)
    # Changing ids clears "dumpable"; pasta (as the same unprivileged id) opens /proc/PID/ns/*.
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def _fail(code: int, message: str) -> None:
    os.write(2, f"kiln sandbox: {message}\n".encode())
    os._exit(code)


def _child(plan: dict[str, Any], to_parent: int, from_parent: int) -> None:
    root = plan["root"]
    try:
        _become(plan["uid"], plan["gid"])
        _unshare(CLONE_NEWUSER, "creating the user namespace")
        os.write(to_parent, b"u")
        if os.read(from_parent, 1) != b"m":
            os._exit(125)
        _become(0, 0)
        # The working directory (kiln's home) moves into the new mount namespace with us:
        # layer paths are relative to it, so no directory above it need be open to these ids.
        _unshare(CLONE_NEWNS | CLONE_NEWNET, "creating the namespaces")
        _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
        _mount("kiln", root, "overlay", 0, plan["overlay"])
        for source, target, read_only, follow_links in plan["binds"]:
            _bind(source, root + target, read_only, follow_links)
        if os.path.isdir(root + "/sys"):
            # The container's own sysfs (its network namespace's devices), read-only; without
            # one (a kernel that refuses it) the image's empty /sys stays.
            with contextlib.suppress(OSError):
                _mount("sysfs", root + "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        if not plan["pasta"]:
            _loopback_up()
    except OSError as exc:
        _fail(125, str(exc))
    os.write(to_parent, b"n")
    if os.read(from_parent, 1) != b"g":
        os._exit(125)
    try:
        os.execvp(plan["argv"][0], plan["argv"])
    except OSError as exc:
        _fail(126, f"cannot run {plan['argv'][0]}: {exc}")


def _bind(source: str, target: str, read_only: bool, follow_links: bool = True) -> None:
    opened = None
    if not follow_links:
        # Bind the very directory reached without links: /proc/self/fd/N names what N is.
        opened = _open_without_links(source)
        source = f"/proc/self/fd/{opened}"
    try:
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass
        _mount(source, target, None, MS_BIND | MS_REC, None)
    finally:
        if opened is not None:
            os.close(opened)
    if read_only:
        _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def _open_without_links(path: str) -> int:
    """`path` (relative to the working directory, kiln's home, unless absolute) opened as an
    O_PATH descriptor one component at a time; a link anywhere in it is refused."""
    fd = os.open("/" if path.startswith("/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in [part for part in path.split("/") if part not in ("", ".")]:
        try:
            child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        if stat.S_ISLNK(os.fstat(child).st_mode) or name == "..":
            os.close(child)
            raise OSError(
                errno.ELOOP, f"{path} goes through a symbolic link, and kiln never binds through one"
            )
        fd = child
    return fd


def _loopback_up() -> None:
    """A network namespace without pasta has only `lo`, and it is down: bring it up."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _write_maps(pid: int, uid: int, gid: int, count: int) -> None:
    # Root may map any range without /etc/subuid; no "setgroups deny": apt drops groups inside.
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} {count}\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} {count}\n")


def _start_pasta(plan: dict[str, Any], pid: int) -> str | None:
    """Start pasta on the child's namespaces; returns an error text, or None."""
    tcp = [arg for spec in plan["forwards"] for arg in ("-t", spec)] or ["-t", "none"]
    to_host = [arg for port in plan.get("host_ports", []) for arg in ("-T", port)] or ["-T", "none"]
    argv = [
        plan["pasta"], "--runas", plan["pasta_runas"], "-q", "-P", plan["pasta_pidfile"],
        "--config-net", "-I", "eth0", *tcp, "-u", "none",
        # No way from the container to the host's own services but the ports named (kiln's blob
        # server), and the gateway address is not mapped to the host's loopback.
        *to_host, "-U", "none", "--no-map-gw",
        str(pid),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"pasta failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
    return None


def stop_pasta(pidfile: str) -> None:
    """Kill the pasta a pid file names (pasta outlives the namespace it serves)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    if comm.startswith(("passt", "pasta")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.unlink(pidfile)


def main(plan_fd: int) -> None:
    with os.fdopen(plan_fd, "rb") as f:
        plan = json.loads(f.read())
    # A helper whose server is gone takes its container with it (bubblewrap dies with us).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != plan["server_pid"]:
        os._exit(125)
    os.chdir(plan["home"])  # as root: the unprivileged ids may traverse it, not its parents
    for procs in plan["cgroup_procs"]:
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            _fail(126, f"cannot join cgroup {procs}: {exc}")
    child_r, parent_w = os.pipe()
    parent_r, child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(parent_w)
        os.close(parent_r)
        _child(plan, child_w, child_r)
        os._exit(127)
    os.close(child_r)
    os.close(child_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: _forward(pid, s))
    error = None
    if os.read(parent_r, 1) == b"u":
        try:
            _write_maps(pid, plan["uid"], plan["gid"], plan["count"])
        except OSError as exc:
            error = f"cannot map the container's ids: {exc}"
        os.write(parent_w, b"m" if error is None else b"x")
        if error is None and os.read(parent_r, 1) == b"n":
            if plan["pasta"]:
                error = _start_pasta(plan, pid)
            os.write(parent_w, b"g" if error is None else b"x")
    if error is not None:
        os.write(2, f"kiln sandbox: {error}\n".encode())
    _, status = os.waitpid(pid, 0)
    if plan["pasta"]:
        stop_pasta(plan["pasta_pidfile"])
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if error is None else 125)


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


if __name__ == "__main__":
    main(int(sys.argv[1]))
