"""The local runtime: bubblewrap namespaces over a kernel overlayfs root, unprivileged on the host.

Each container starts as `python -m kiln.containers.namespaces` (as root): it joins the
container's cgroups, makes a user namespace whose root is host uid 100000, mounts the overlay
inside it, starts pasta for the container's own network namespace, and execs bubblewrap with
Docker's capability set and kiln's seccomp filter. Every argument that could carry a secret (the
environment) travels on descriptors, never on a command line. The overlay lives only in the
container's private mount namespace: when its last process exits the kernel drops it, so no
mount can outlive the container, even if the server is SIGKILLed. See `namespaces.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers.cgroups import Cgroups
from kiln.containers.container import Container
from kiln.containers.devices import container_devices, present
from kiln.containers.egress import CAP_BYPASSING_FILTERS, EgressFilter, nft_binary, resolvers
from kiln.containers.idmap import IdMap
from kiln.containers.namespaces import stop_pasta
from kiln.containers.readonly import read_only_paths
from kiln.containers.seccomp import filter_bpf
from kiln.containers.spec import ContainerSpec, Layer, OutputSink
from kiln.errors import SandboxUnavailable
from kiln.locks import Leases

# The helper's own file, run by path (not `-m`): it needs nothing of kiln, and starts faster.
_HELPER = Path(__file__).with_name("namespaces.py")
# Where each helper mounts its container's root, in its own mount namespace (so one mount point
# serves every container): a path the unprivileged ids can reach, unlike kiln's home.
SANDBOX_ROOT = Path("/run/kiln-sandbox")
# pasta (as the containers' uid) writes its pid here: `<server pid>-<container>.pid`.
PASTA_PIDS = Path("/run/kiln-pasta")

log = logging.getLogger("kiln.containers")

# Where a layer of a spec lies on this machine.
LayerPaths = Callable[[Layer], Path]

# Docker's default capability set (moby `caps/defaults.go`): what package managers need, and no
# CAP_SYS_ADMIN. They hold only over the container's own user namespace.
DOCKER_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
# What container engines hide of /proc: host-wide state a container has no business reading.
_MASKED_PROC_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "timer_stats")
# Where the host's CA bundle and certificate directory appear (never in a layer: builds scrub it).
HOST_FILES = "/.kiln-host"
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")


@dataclass(frozen=True)
class Isolation:
    """What every container gets unless its spec says otherwise."""

    ids: IdMap = field(default_factory=IdMap)
    pids_max: int = 2048  # processes and threads in one container
    memory_mb: int = 0  # ceiling for containers that set no memory limit (0 = none)


def check_sandbox_support() -> None:
    """Raise SandboxUnavailable with the fix if this machine cannot run kiln's sandboxes."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed; kiln runs every container in a bubblewrap sandbox. "
            "Install it with `sudo apt-get install -y bubblewrap` (Debian/Ubuntu) "
            "or `sudo dnf install -y bubblewrap` (Fedora)."
        )
    if shutil.which("pasta") is None:
        raise SandboxUnavailable(
            "pasta (Debian's `passt` package) gives each container its own network: "
            "`sudo apt-get install -y passt`, or run scripts/install."
        )
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "kiln maps each container's root to an unprivileged id range and must run as root to "
            "write those maps: start it with `sudo`."
        )
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        raise SandboxUnavailable(
            f"kiln's seccomp filter needs libseccomp ({exc}): `sudo apt-get install -y libseccomp2` "
            "and `pip install pyseccomp` (scripts/install does both)."
        ) from exc


class BubblewrapRuntime:
    """Starts containers on this machine. `scratch_root` holds per-container upper/work dirs;
    `paths` finds a spec's layers in this machine's stores."""

    def __init__(
        self,
        scratch_root: Path,
        overlay_root: Path,
        paths: LayerPaths,
        isolation: Isolation | None = None,
    ) -> None:
        self.scratch_root = scratch_root
        self.overlay_root = overlay_root
        self.paths = paths
        self.isolation = isolation or Isolation()
        self.ids: IdMap | None = self.isolation.ids
        self._live: dict[Container, asyncio.Future[None]] = {}  # each with the task that reaps it
        self.cgroups = Cgroups()
        self.cgroups.remove_stale()
        self.leases = Leases()  # no one deletes a layer while a container uses it
        self.pasta = shutil.which("pasta") or "pasta"
        SANDBOX_ROOT.mkdir(parents=True, exist_ok=True)
        PASTA_PIDS.mkdir(mode=0o700, exist_ok=True)
        self.isolation.ids.own(PASTA_PIDS)
        # The container's root (host gid of root inside) may walk into kiln's home, and no
        # one else: layer paths are opened from there by the sandbox helper.
        for directory in (overlay_root, scratch_root):
            self.open_to_containers(directory)
        _let_pasta_open_tun()

    def open_to_containers(self, directory: Path) -> None:
        """Let the containers' ids (the sandbox helper, bubblewrap) walk through `directory`,
        not list it; no other user gains anything."""
        os.chown(directory, -1, self.isolation.ids.gid)
        os.chmod(directory, 0o710)

    async def start(self, spec: ContainerSpec, sink: OutputSink | None = None) -> Container:
        ids = self.isolation.ids
        egress = _egress_filter(spec)  # first: it refuses when this machine lacks nft
        scratch = self.scratch_root / uuid.uuid4().hex[:16]
        merged = scratch / "merged"
        work = scratch / "work"
        upper = spec.upper if spec.upper is not None else scratch / "upper"
        for d in (merged, work, upper):
            d.mkdir(parents=True, exist_ok=True)
        if spec.upper is not None and spec.upper.stat().st_dev != work.stat().st_dev:
            raise SandboxUnavailable("an overlay's upper and work directories must share a filesystem")
        ids.own(scratch, merged, work, upper)  # the container's root writes here

        mounts = [self.paths(layer) for layer in spec.mounts]
        image_layers = [self.paths(layer) for layer in spec.image]
        lower_dirs = [*mounts, *image_layers]
        read_only = read_only_paths(mounts, image_layers) if mounts else []
        lowers = ":".join(self._relative(layer) for layer in lower_dirs)
        options = (
            f"lowerdir={lowers},upperdir={self._relative(upper)},workdir={self._relative(work)},userxattr"
        )
        fds = _Descriptors()
        try:
            args = self._bwrap_args(spec, read_only, fds, filtered=egress is not None)
            args_fd = fds.memfd("kiln-bwrap-args", b"".join(a.encode() + b"\0" for a in args))
            pasta_pidfile = str(PASTA_PIDS / f"{os.getpid()}-{scratch.name}.pid") if spec.network else ""
            plan: dict[str, object] = {
                "server_pid": os.getpid(),
                "uid": ids.uid,
                "gid": ids.gid,
                "count": ids.count,
                "home": str(self.overlay_root),
                "root": str(SANDBOX_ROOT),
                "overlay": options,
                "binds": [
                    [self._relative(b.source), b.target, b.read_only, b.follow_links] for b in spec.binds
                ],
                # The command stays on the command line (bwrap takes it only there); the options,
                # the environment among them, come from the descriptor.
                "argv": ["bwrap", "--args", str(args_fd), "--", *spec.argv],
                "pasta": self.pasta if spec.network else "",
                "pasta_pidfile": pasta_pidfile,
                "pasta_runas": f"{ids.uid}:{ids.gid}",
                "forwards": [f"127.0.0.1/{f.host_port}:{f.container_port}" for f in spec.forwards],
                "host_ports": [str(port) for port in spec.host_ports],
                # Loaded into the container's network namespace before its command runs.
                "nft": egress.nft if egress else "",
                "egress": egress.ruleset(spec.egress_allowlist) if egress else "",
            }
            memory = spec.memory_limit_mb or self.isolation.memory_mb
            cgroup = self.cgroups.create(scratch.name, spec.cpu_limit, memory, self.isolation.pids_max)
            plan["cgroup_procs"] = cgroup.procs_files if cgroup else []
            plan_fd = fds.memfd("kiln-plan", json.dumps(plan).encode())
            leased = self.leases.acquire(lower_dirs)
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", str(_HELPER), str(plan_fd),
                    env=_helper_env(),
                    stdin=asyncio.subprocess.PIPE if spec.stdin else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=fds.all,
                )  # fmt: skip
            except BaseException:
                self.leases.release(leased)
                if cgroup is not None:
                    cgroup.remove()
                raise
        finally:
            fds.close()
        container = Container(process, scratch, sink, cgroup, pasta_pidfile=pasta_pidfile, egress=egress)
        self._live[container] = asyncio.ensure_future(self._forget_when_done(container, leased))
        return container

    async def _forget_when_done(self, container: Container, leased: list[Path]) -> None:
        try:
            await container.wait()
        finally:
            self.leases.release(leased)
            self._live.pop(container, None)

    def _relative(self, path: Path) -> str:
        """`path` as the helper sees it: relative to kiln's home (its working directory) when
        inside it, so no directory above the home need be open to the containers' ids."""
        relative = os.path.relpath(path, self.overlay_root)
        return str(path) if relative.startswith("..") else relative

    def _bwrap_args(
        self, spec: ContainerSpec, read_only: list[str], fds: _Descriptors, filtered: bool = False
    ) -> list[str]:
        merged = str(SANDBOX_ROOT)
        caps = [cap for cap in DOCKER_CAPS if not (filtered and cap == CAP_BYPASSING_FILTERS)]
        args = [
            "--bind", merged, "/",
            *(arg for path in read_only for arg in ("--ro-bind", f"{merged}{path}", path)),
            "--proc", "/proc",
            *(arg for name in _masked_proc_files() for arg in ("--ro-bind", "/dev/null", f"/proc/{name}")),
            "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", spec.hostname,
            "--die-with-parent",
            "--cap-drop", "ALL",
            *(arg for cap in caps for arg in ("--cap-add", cap)),
            "--seccomp", str(fds.memfd("kiln-seccomp", filter_bpf())),
            "--clearenv",
        ]  # fmt: skip
        env = dict(spec.env)
        for name in ("/etc/resolv.conf", "/etc/hosts"):
            if spec.network and os.path.exists(name):
                args += ["--ro-bind", os.path.realpath(name), name]
        args += self._host_ca_binds(env)
        if spec.gpus:
            nodes, gpu_env = container_devices(spec.gpus)
            env.update(gpu_env)
            for device in present(nodes):
                args += ["--dev-bind", device, device]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", spec.cwd]
        return args

    @staticmethod
    def _host_ca_binds(env: dict[str, str]) -> list[str]:
        """The host's CA bundle (it may hold the local network's CAs), bound read-only where the
        CA variables now point; the image's own bundle stays as it is."""
        args: list[str] = []
        for variable in _CA_VARIABLES:
            value = env.get(variable, "")
            if value.startswith(HOST_FILES) or not _open_to_all(value):
                continue  # bwrap, an unprivileged id, could not reach it: the image's own stays
            target = f"{HOST_FILES}/{variable.lower()}"
            args += ["--ro-bind", os.path.realpath(value), target]
            env[variable] = target
        return args

    async def shutdown(self) -> None:
        """Kill every container this runtime started."""
        await asyncio.gather(*(c.kill() for c in list(self._live)), return_exceptions=True)
        self.cgroups.cleanup()


class _Descriptors:
    """Descriptors handed to the sandbox helper, closed here once it has started."""

    def __init__(self) -> None:
        self.all: list[int] = []

    def memfd(self, name: str, data: bytes) -> int:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.all.append(fd)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def close(self) -> None:
        for fd in self.all:
            with contextlib.suppress(OSError):
                os.close(fd)


def _egress_filter(spec: ContainerSpec) -> EgressFilter | None:
    """The filter a spec with an allowlist gets (None: open egress, or no network at all); DNS
    stays open to the resolvers of the resolv.conf the container is given."""
    if not spec.network or spec.egress_allowlist is None:
        return None
    try:
        with open("/etc/resolv.conf") as f:
            conf = f.read()
    except OSError:
        conf = ""
    return EgressFilter(nft_binary(), resolvers(conf))


def stop_stale_networks() -> None:
    """Kill the pastas of containers of servers that are gone (a SIGKILLed server's helpers die
    with it, but pasta outlives them)."""
    for pidfile in PASTA_PIDS.glob("*-*.pid"):
        owner = pidfile.name.split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            stop_pasta(str(pidfile))


def _open_to_all(path: str) -> bool:
    """Whether any user can reach `path` (every directory above it searchable, it readable)."""
    if not path.startswith("/"):
        return False
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        parts = Path(real).parents
        return bool(st.st_mode & 0o004) and all(os.stat(p).st_mode & 0o001 for p in parts)
    except OSError:
        return False


def _let_pasta_open_tun() -> None:
    """pasta runs as the containers' unprivileged id and opens /dev/net/tun. udev makes it 0666
    (Debian's default rules; it grants nothing without CAP_NET_ADMIN in a namespace); machines
    without udev may leave it 0600."""
    tun = Path("/dev/net/tun")
    with contextlib.suppress(OSError):
        mode = tun.stat().st_mode & 0o777
        if mode & 0o006 != 0o006:
            os.chmod(tun, 0o666)
            log.info("made /dev/net/tun 0666 (was %o), as udev does, so pasta can run unprivileged", mode)


@functools.cache
def _masked_proc_files() -> list[str]:
    return [name for name in _MASKED_PROC_FILES if os.path.exists(f"/proc/{name}")]


def _helper_env() -> dict[str, str]:
    # The helper needs only to find kiln and bwrap; nothing of the server's environment.
    keep = ("PATH", "PYTHONPATH", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}
