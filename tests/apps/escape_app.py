"""Functions that try to break out of their container, and report what happened.

Each attack returns what the kernel answered; the test decides whether that is a failure (it
must be). `normal` checks that ordinary work still succeeds under the same confinement.
"""

import ctypes
import errno
import os
import socket
import threading

import modal

app = modal.App("kiln-test-escape")
image = modal.Image.debian_slim().pip_install("six").run_commands("echo built > /built.txt")
secret = modal.Secret.from_dict({"KILN_ESCAPE_SECRET": os.environ.get("KILN_ESCAPE_SECRET", "unset")})

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000


def _errno_of(result: int) -> str:
    if result == 0:
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def _mount(source: str, target: str, fstype: str, data: str | None = None) -> str:
    os.makedirs(target, exist_ok=True)
    return _errno_of(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode() if data else None)
    )


@app.function(image=image)
def mount_tmpfs() -> str:
    return _mount("none", "/tmp/kiln-tmpfs", "tmpfs")


@app.function(image=image)
def mount_sysfs() -> str:
    return _mount("none", "/tmp/kiln-sysfs", "sysfs")


@app.function(image=image)
def cgroup_release_agent() -> dict[str, str]:
    """Mount a cgroup v1 hierarchy and point its release_agent at a script of ours."""
    results = {}
    for controller in ("blkio", "pids", "memory", "rdma"):
        target = f"/tmp/kiln-cg-{controller}"
        results[controller] = _mount("cgroup", target, "cgroup", controller)
        if results[controller] == "ok":
            try:
                with open(f"{target}/release_agent", "w") as f:
                    f.write("/tmp/pwn.sh")
                results[controller] += ", release_agent written"
            except OSError as exc:
                results[controller] += f", release_agent: {exc.strerror}"
    # Through a fresh user namespace first, as in CVE-2022-0492's exploits.
    results["unshare"] = _errno_of(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    return results


@app.function(image=image)
def mknod_disk(major: int, minor: int) -> str:
    path = "/tmp/kiln-disk"
    try:
        os.mknod(path, 0o600 | 0o060000, os.makedev(major, minor))  # S_IFBLK
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read(512))} bytes"
    except OSError as exc:
        return f"created, open: {errno.errorcode.get(exc.errno or 0, str(exc))}"


@app.function(image=image)
def read_shadow() -> str:
    with open("/etc/shadow") as f:
        return f.read()


@app.function(image=image)
def connect(host: str, port: int) -> str:
    """Connect to host:port; "gateway" means the container's default gateway."""
    if host == "gateway":
        with open("/proc/net/route") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    host = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"hello from a container\n")
            return f"connected to {host}:{port}"
    except OSError as exc:
        return f"{host}:{port}: {type(exc).__name__}"


@app.function(image=image)
def fork_storm(limit: int) -> dict[str, object]:
    """Start up to `limit` threads (each a task in the pids cgroup) until the kernel refuses."""
    threading.stack_size(64 * 1024)
    stop = threading.Event()
    threads = []
    error = ""
    for _ in range(limit):
        thread = threading.Thread(target=stop.wait)
        try:
            thread.start()
        except RuntimeError as exc:
            error = str(exc)
            break
        threads.append(thread)
    started = len(threads)
    stop.set()
    for thread in threads:
        thread.join()
    return {"started": started, "error": error}


@app.function(image=image)
def nested_userns() -> dict[str, str]:
    return {
        "unshare": _errno_of(_libc.unshare(CLONE_NEWUSER)),
        "unshare(1)": str(os.system("unshare -U true 2>/dev/null") >> 8),
    }


@app.function(image=image)
def write_marker(name: str) -> str:
    """Write a file; the test finds it in the container's upper directory on the host."""
    with open(f"/root/{name}", "w") as f:
        f.write("marker")
    return f"uid {os.getuid()}"


@app.function(image=image, secrets=[secret])
def secret_value() -> str:
    return os.environ.get("KILN_ESCAPE_SECRET", "")


@app.function(image=image)
def normal() -> dict[str, object]:
    """What must keep working: packages from the build, the image's files, the package index."""
    import urllib.request

    import six

    with open("/built.txt") as f:
        built = f.read().strip()
    with open(__file__) as f:
        own_source = "def normal" in f.read()
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=20) as response:
            index = response.status
    except OSError as exc:
        index = f"unreachable: {exc}"
    return {"six": six.__name__, "built": built, "own_source": own_source, "index": index}
