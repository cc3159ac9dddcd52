"""The local runtime: bubblewrap namespaces over a kernel overlayfs root.

Debian 12's bubblewrap (0.8) has no overlay options, so each container starts as
`unshare --mount` → `mount -t overlay` → `exec bwrap --bind <merged> /`. The overlay lives only in
that private mount namespace: when the container's last process exits the kernel drops it, so no
mount can outlive the container, even if the server is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from kiln.containers.cgroups import Cgroups
from kiln.containers.container import Container
from kiln.containers.devices import container_devices, present
from kiln.containers.readonly import read_only_paths
from kiln.containers.spec import ContainerSpec, Layer, OutputSink
from kiln.errors import SandboxUnavailable
from kiln.locks import Leases

# Where a layer of a spec lies on this machine.
LayerPaths = Callable[[Layer], Path]

# Runs inside the fresh mount namespace: join the container's cgroups (before anything of the
# container runs), mount the overlay, then become bubblewrap.
_MOUNT_THEN_EXEC = (
    'for f in $KILN_CGROUP_PROCS; do echo $$ > "$f" || exit 126; done; '
    'cd "$1" && mount -t overlay kiln -o "$2" "$3" || exit 125; shift 3; exec "$@"'
)


def check_sandbox_support() -> None:
    """Raise SandboxUnavailable with the fix if this machine cannot run kiln's sandboxes."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed; kiln runs every container in a bubblewrap sandbox. "
            "Install it with `sudo apt-get install -y bubblewrap` (Debian/Ubuntu) "
            "or `sudo dnf install -y bubblewrap` (Fedora)."
        )
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        raise SandboxUnavailable(
            "`unshare` and `mount` (util-linux) are required: `sudo apt-get install -y util-linux mount`."
        )
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "kiln mounts overlay root filesystems for its containers and must run as root: "
            "start it with `sudo`."
        )


class BubblewrapRuntime:
    """Starts containers on this machine. `scratch_root` holds per-container upper/work dirs;
    `paths` finds a spec's layers in this machine's stores."""

    def __init__(self, scratch_root: Path, overlay_root: Path, paths: LayerPaths) -> None:
        self.scratch_root = scratch_root
        # Layer paths are passed relative to this directory: mount options are limited to one page.
        self.overlay_root = overlay_root
        self.paths = paths
        self._live: dict[Container, asyncio.Future[None]] = {}  # each with the task that reaps it
        self.cgroups = Cgroups()
        self.leases = Leases()  # no one deletes a layer while a container uses it

    async def start(self, spec: ContainerSpec, sink: OutputSink | None = None) -> Container:
        scratch = self.scratch_root / uuid.uuid4().hex[:16]
        merged = scratch / "merged"
        work = scratch / "work"
        upper = spec.upper if spec.upper is not None else scratch / "upper"
        for d in (merged, work, upper):
            d.mkdir(parents=True, exist_ok=True)
        if spec.upper is not None and spec.upper.stat().st_dev != work.stat().st_dev:
            raise SandboxUnavailable("an overlay's upper and work directories must share a filesystem")

        mounts = [self.paths(layer) for layer in spec.mounts]
        image_layers = [self.paths(layer) for layer in spec.image]
        lower_dirs = [*mounts, *image_layers]
        read_only = read_only_paths(mounts, image_layers) if mounts else []
        lowers = ":".join(os.path.relpath(layer, self.overlay_root) for layer in lower_dirs)
        options = f"lowerdir={lowers},upperdir={upper},workdir={work}"
        argv = [
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", _MOUNT_THEN_EXEC, "kiln-overlay",
            str(self.overlay_root), options, str(merged),
            *self._bwrap_args(spec, merged, read_only),
        ]  # fmt: skip
        cgroup = self.cgroups.create(scratch.name, spec.cpu_limit, spec.memory_limit_mb)
        leased = self.leases.acquire(lower_dirs)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, "KILN_CGROUP_PROCS": " ".join(cgroup.procs_files) if cgroup else ""},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            self.leases.release(leased)
            raise
        container = Container(process, scratch, sink, cgroup)
        self._live[container] = asyncio.ensure_future(self._forget_when_done(container, leased))
        return container

    async def _forget_when_done(self, container: Container, leased: list[Path]) -> None:
        try:
            await container.wait()
        finally:
            self.leases.release(leased)
            self._live.pop(container, None)

    def _bwrap_args(self, spec: ContainerSpec, merged: Path, read_only: list[str]) -> list[str]:
        args = [
            "bwrap",
            "--bind", str(merged), "/",
            *(arg for path in read_only for arg in ("--ro-bind", f"{merged}{path}", path)),
            "--proc", "/proc",
            "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", spec.hostname,
            "--die-with-parent",
            # Image builds run package managers that chown and setuid: keep root's capabilities
            # inside the namespaces, as a container engine does.
            "--cap-add", "ALL",
            "--clearenv",
        ]  # fmt: skip
        if not spec.network:
            args.append("--unshare-net")
        else:
            for name in ("/etc/resolv.conf", "/etc/hosts"):
                if os.path.exists(name):
                    args += ["--ro-bind", os.path.realpath(name), name]
        env = dict(spec.env)
        if spec.gpus:
            nodes, gpu_env = container_devices(spec.gpus)
            env.update(gpu_env)
            for device in present(nodes):
                args += ["--dev-bind", device, device]
        for bind in spec.binds:
            args += ["--ro-bind" if bind.read_only else "--bind", str(bind.source), bind.target]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", spec.cwd, "--", *spec.argv]
        return args

    async def shutdown(self) -> None:
        """Kill every container this runtime started."""
        await asyncio.gather(*(c.kill() for c in list(self._live)), return_exceptions=True)
        self.cgroups.cleanup()
