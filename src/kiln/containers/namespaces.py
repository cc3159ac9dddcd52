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
   way back to the host's loopback), loads its egress rules there when the plan has an
   allowlist (`nft`, joining that network namespace alone: `egress.py`), and lets the child
   exec bubblewrap, whose arguments (environment included) come from a descriptor too;
5. the parent waits for the child, stops pasta (it does not exit by itself) and exits with the
   child's status.

`namespaces.py --serve PLAN_FD` is a running container's exec server (a sandbox's `exec`): it
opens the namespaces and root of the container's init (bubblewrap's PID 1) and its cgroups once,
and for each request forks a child that joins the cgroups, the PID namespace, the IPC, UTS,
network, cgroup and mount namespaces, chroots to that root, joins the user namespace, becomes its
root (host 100000), keeps only Docker's capabilities (bounding, permitted, effective, inheritable
and ambient sets, as bubblewrap leaves them), sets no_new_privs, loads the same seccomp filter
and execs the command. The server itself stays a plain root process of the host that only forks,
waits and reports; its children die with it (PDEATHSIG). It also replaces a filtered sandbox's
egress rules when asked (`netfilter`: nft in the container's network namespace alone), and
mounts or unmounts an image inside it (`mount`/`unmount`, below).

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
import stat
import struct
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
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
SECCOMP_MODE_FILTER = 2
_CAPABILITY_VERSION_3 = 0x20080522
TIOCSCTTY = 0x540E
# The namespaces an exec joins, in order: all but the user namespace while still root of the
# host (joining a mount namespace needs CAP_SYS_ADMIN over its owner), the user namespace last.
_ENTER_ORDER = (("ipc", 0x08000000), ("uts", 0x04000000), ("net", CLONE_NEWNET), ("cgroup", 0x02000000),
                ("mnt", CLONE_NEWNS))  # fmt: skip

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
    import socket  # imported by main() before any id change; here it is only bound

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
    import subprocess  # imported by main() up front

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


def _load_rules(nft: str, netns: int, rules: str) -> str | None:
    """Load an nft script into the network namespace `netns` (a descriptor); an error text, or
    None. nft runs as this process (root of the host) having joined that namespace alone: it
    reads nothing of the container's files and runs under none of its ids, and the container's
    own processes, which lack CAP_NET_ADMIN, cannot undo what it loads."""
    import subprocess  # imported up front by main() and serve()

    def join() -> None:
        _check(_libc.setns(netns, CLONE_NEWNET), "joining the container's network namespace")

    try:
        result = subprocess.run(
            [nft, "-f", "-"], input=rules, capture_output=True, text=True, check=False, preexec_fn=join
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {nft}: {exc}"
    if result.returncode != 0:
        return f"nft could not load the egress rules ({result.returncode}): {result.stderr.strip()}"
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
    # Starting a container needs these; an exec (`enter`) does not, and starts faster without.
    import socket  # noqa: F401
    import subprocess  # noqa: F401

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
            if error is None and plan.get("egress"):
                netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    error = _load_rules(plan["nft"], netns, plan["egress"])
                finally:
                    os.close(netns)
            os.write(parent_w, b"g" if error is None else b"x")
    if error is not None:
        os.write(2, f"kiln sandbox: {error}\n".encode())
    _, status = os.waitpid(pid, 0)
    if plan["pasta"]:
        stop_pasta(plan["pasta_pidfile"])
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if error is None else 125)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _open_terminal(channel: int) -> None:
    """Open a pseudo-terminal on the container's own devpts (as the container's root, inside its
    root: nothing of the host is resolved), send its master side back to the server, and make
    the slave side this process's controlling terminal and stdio."""
    import socket  # imported before entering (enter()); here it is only bound

    master, slave = os.openpty()
    with socket.socket(fileno=channel) as sock:
        socket.send_fds(sock, [b"t"], [master])
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _keep_only_caps(keep: list[int]) -> None:
    """Leave exactly `keep` in every capability set (bounding, permitted, effective,
    inheritable, ambient): what bubblewrap's `--cap-drop ALL --cap-add …` leaves its command."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    mask = sum(1 << cap for cap in keep)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i] = _CapData(word, word, word)
    _check(_libc.capset(ctypes.byref(header), data), "setting capabilities")
    for cap in keep:
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), f"raising capability {cap}")


def _load_seccomp(program: bytes) -> None:
    count = len(program) // 8
    filters = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "loading seccomp")


def _enter_child(
    plan: dict[str, Any], namespaces: dict[str, int], root: int, user: int, program: bytes, tool: Any
) -> None:
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        for name, flag in _ENTER_ORDER:
            if name in namespaces:
                _check(_libc.setns(namespaces[name], flag), f"joining the container's {name} namespace")
        os.fchdir(root)
        os.chroot(".")
        _check(_libc.setns(user, CLONE_NEWUSER), "joining the container's user namespace")
        _become(0, 0)
        for fd in (*namespaces.values(), root, user):
            os.close(fd)
        if plan.get("pty", -1) >= 0:
            _open_terminal(plan["pty"])
        try:
            os.chdir(plan["cwd"])
        except OSError as exc:
            _fail(126, f"cannot use {plan['cwd']} as the working directory: {exc.strerror}")
        _keep_only_caps(plan["caps"])
        _load_seccomp(program)
    except OSError as exc:
        _fail(125, str(exc))
    env = plan["env"]
    os.closerange(3, 1 << 16)  # the plan and filter descriptors stay with the helper
    if tool is not None:  # a tool of kiln's own, run here under the same confinement
        os._exit(tool.run(plan["argv"][1] if len(plan["argv"]) > 1 else ""))
    try:
        os.execvpe(plan["argv"][0], plan["argv"], env)
    except OSError as exc:
        _fail(127 if exc.errno == 2 else 126, f"cannot run {plan['argv'][0]}: {exc.strerror}")


def _load_tool(name: str) -> Any:
    """A tool module beside this file (`fs_tools`), loaded before entering: the container's
    root has no copy of kiln."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # The command name may hold spaces and parentheses: fields follow the last ')'.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 1 and int(fields[1]) == pid:
                found.append(int(name))
    return found


def _find_init(helper: int, wait: float = 10.0) -> int:
    """The container's PID 1 (bubblewrap's init: the child of the helper's child), once it has
    set up the root (it has started the command)."""
    import time

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{helper}"):
            break
        monitors = _children(helper)
        inits = _children(min(monitors)) if monitors else []
        if inits and _children(min(inits)):
            return min(inits)
        time.sleep(0.002)
    _fail(125, "the container ended, or did not finish starting within 10 s")
    return 0


def _prepare(plan: dict[str, Any]) -> tuple[dict[str, int], int, int, bytes, list[int]]:
    """What every exec of one container needs, opened once by its exec server: the namespaces,
    user namespace and root of the container's init, the seccomp program, and its cgroups."""
    target = _find_init(plan["helper"])
    namespaces = {
        name: os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        for name, _ in _ENTER_ORDER
        if os.path.exists(f"/proc/{target}/ns/{name}")
    }
    user = os.open(f"/proc/{target}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The namespaces are read from the init's /proc entry: refuse if that pid was reused by a
    # process outside the container (its user namespace would be the host's).
    if os.fstat(user).st_ino == os.stat("/proc/self/ns/user").st_ino:
        _fail(125, "the container has ended")
    with open(plan["seccomp"], "rb") as f:
        program = f.read()
    cgroups = [os.open(procs, os.O_WRONLY | os.O_CLOEXEC) for procs in plan["cgroup_procs"]]
    pid_ns = os.open(f"/proc/{target}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(pid_ns, 0x20000000), "joining the container's PID namespace")  # for children
    os.close(pid_ns)
    return namespaces, root, user, program, cgroups


# The new mount API and openat2: the same numbers on x86_64 and aarch64 (asm-generic).
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x2, 0x4
_MOVE_MOUNT_F_EMPTY_PATH, _MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
_MNT_DETACH, _UMOUNT_NOFOLLOW = 0x2, 0x8


def _syscall(number: int, what: str, *args: Any) -> int:
    _libc.syscall.restype = ctypes.c_long
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def _overlay(lower: list[str], upper: str, work: str) -> int:
    """A detached overlay mount (nosuid, nodev) of host directories, made here on the host, as
    root: only kiln's paths are resolved on the host."""
    fs = _syscall(_SYS_FSOPEN, "opening overlayfs", ctypes.c_char_p(b"overlay"), ctypes.c_uint(1))
    try:
        # One "lowerdir+" per layer (topmost first): a string value is at most 256 bytes.
        for key, value in (*(("lowerdir+", path) for path in lower), ("upperdir", upper), ("workdir", work)):
            _syscall(
                _SYS_FSCONFIG, f"overlay {key}", ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_SET_STRING),
                ctypes.c_char_p(key.encode()), ctypes.c_char_p(value.encode()), ctypes.c_int(0),
            )  # fmt: skip
        # Whiteouts and opaque directories in user.* xattrs, as the container's own overlay has them.
        _syscall(
            _SYS_FSCONFIG, "overlay userxattr", ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_SET_FLAG),
            ctypes.c_char_p(b"userxattr"), None, ctypes.c_int(0),
        )  # fmt: skip
        _syscall(
            _SYS_FSCONFIG, "creating the overlay", ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_CMD_CREATE),
            None, None, ctypes.c_int(0),
        )  # fmt: skip
        attrs = _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
        return _syscall(
            _SYS_FSMOUNT, "mounting the overlay", ctypes.c_int(fs), ctypes.c_uint(1), ctypes.c_uint(attrs)
        )
    except OSError as exc:
        said = _kernel_says(fs)
        if exc.errno == errno.EINVAL and "lowerdir+" in said:
            said += (
                f"; mounting an image in a sandbox needs Linux 6.8 or later (this is {os.uname().release})"
            )
        raise OSError(exc.errno, f"{exc.strerror}{said}") from None
    finally:
        os.close(fs)


def _kernel_says(fs: int) -> str:
    """What the kernel logged on a file system context (why a mount was refused)."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        while len(lines) < 8 and (line := os.read(fs, 512)):
            lines.append(line.decode(errors="replace").strip())
    return f" ({'; '.join(lines)})" if lines else ""


def _mount_child(
    request: dict[str, Any], namespaces: dict[str, int], root: int, dir_copy: Any
) -> dict[str, Any]:
    """`mount`: the image's overlay, made on the host, attached at `path` in the container's
    mount namespace (resolved inside). `unmount`: the mount at `path`, if it is still the one
    kiln attached (same device and inode), detached. Runs in a child of the server, as root of
    the host; it runs nothing of the container's and joins only its mount namespace."""
    path = request["path"]
    mount = _overlay(request["lower"], request["upper"], request["work"]) if request["op"] == "mount" else -1
    _check(_libc.setns(namespaces["mnt"], CLONE_NEWNS), "joining the container's mount namespace")
    try:  # resolved as if the container's root were `/`, magic links refused (`dir_copy`)
        target = dir_copy.open_in_root(root, path, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        raise OSError(exc.errno, f"{path} in the sandbox: {os.strerror(exc.errno or 0)}") from None
    if request["op"] == "mount":
        _syscall(
            _SYS_MOVE_MOUNT, f"mounting on {path}", ctypes.c_int(mount), ctypes.c_char_p(b""),
            ctypes.c_int(target), ctypes.c_char_p(b""),
            ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH),
        )  # fmt: skip
        st = os.fstat(mount)
        return {"dev": st.st_dev, "ino": st.st_ino}
    st = os.fstat(target)
    if (st.st_dev, st.st_ino) != (request["dev"], request["ino"]):
        raise OSError(
            errno.EINVAL,
            f"{path} no longer leads to the image kiln mounted there (the sandbox moved or replaced "
            "it): nothing was unmounted; that mount ends with the sandbox",
        )
    os.fchdir(target)  # "." is the mount's root: nothing is looked up by name
    _check(_libc.umount2(b".", _MNT_DETACH | _UMOUNT_NOFOLLOW), f"unmounting {path}")
    return {}


def serve(plan: dict[str, Any]) -> None:
    """An exec server for one container (`namespaces.py --serve PLAN_FD`): prepared once, it
    forks one confined child per request from the server (a JSON message on the channel with
    the command's stdin, stdout, stderr and, for a pty, a socket to send the terminal back), and
    reports each child's pid and exit status. It stays outside the container's cgroups and
    namespaces itself; it ends when the server closes the channel (or dies: PDEATHSIG)."""
    import select
    import socket
    import subprocess  # noqa: F401  (for _load_rules)

    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != plan["server_pid"]:
        os._exit(125)
    try:
        namespaces, root, user, program, cgroups = _prepare(plan)
    except OSError as exc:
        _fail(125, f"cannot enter the container: {exc.strerror or exc}")
        return
    tools = {name: _load_tool(name) for name in ("fs_tools", "probes", "dir_copy")}
    channel = socket.socket(fileno=plan["channel"])
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    running: dict[int, int] = {}  # pid → the server's key for it

    def tell(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            channel.send(json.dumps(message).encode())

    while True:
        try:
            ready, _, _ = select.select([channel.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                key = running.pop(pid, None)
                if key is not None:
                    if os.WIFSIGNALED(status):
                        tell({"exited": key, "signal": os.WTERMSIG(status)})
                    else:
                        tell({"exited": key, "code": os.WEXITSTATUS(status)})
        if channel.fileno() not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 4)
        except InterruptedError:
            continue
        if not message:  # the server is done with this container
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os._exit(0)
        request = json.loads(message)
        if request["op"] == "netfilter":  # the sandbox's egress rules, replaced
            for fd in fds:
                os.close(fd)
            error = _load_rules(request["nft"], namespaces["net"], request["rules"])
            tell({"answer": request["key"], "error": error or ""})
            continue
        if request["op"] in ("mount", "unmount"):
            for fd in fds:
                os.close(fd)
            if os.fork() == 0:
                signal.set_wakeup_fd(-1)
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                try:
                    answer = {
                        "answer": request["key"],
                        "error": "",
                        **_mount_child(request, namespaces, root, tools["dir_copy"]),
                    }
                except OSError as exc:
                    answer = {"answer": request["key"], "error": str(exc.strerror or exc)}
                tell(answer)
                os._exit(0)
            continue
        if request["op"] == "kill":
            pid = next((p for p, k in running.items() if k == request["key"]), 0)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, request.get("signal", signal.SIGKILL))
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            tell(
                {
                    "failed": request["key"],
                    "error": f"cannot start a process in the container: {exc.strerror}",
                }
            )
            continue
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for n in range(3):
                os.dup2(fds[n], n)
            for fd in cgroups:  # "0": this process, in any PID namespace
                os.write(fd, b"0")
            child = {**plan, **request, "pty": fds[3] if request.get("pty") else -1}
            _enter_child(child, namespaces, root, user, program, tools.get(request.get("tool", "")))
            os._exit(127)
        for fd in fds:
            os.close(fd)
        running[pid] = request["key"]
        tell({"started": request["key"], "pid": pid})


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        with os.fdopen(int(sys.argv[2]), "rb") as _plan:
            serve(json.loads(_plan.read()))
    else:
        main(int(sys.argv[1]))
