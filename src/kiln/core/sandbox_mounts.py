"""Images mounted into a running sandbox, and a directory of it made an image:
`Sandbox.mount_image(path, image)`, `unmount_image(path)` and `snapshot_directory(path)`.

Every path the client names is the sandbox's, so it is resolved inside the sandbox: the mount
and unmount by the sandbox's exec server (a child of it joins the sandbox's mount namespace and
resolves the path from the sandbox's root, links leading where they lead inside, magic links
refused: `containers/namespaces.py`); the mount point is made, and the directory is copied, by
kiln's tools run as any exec is, as the sandbox's own root under all its confinement
(`containers/fs_tools.py`, `containers/dir_copy.py`). The host resolves only kiln's own paths.

A mounted image is an overlay of the image's layers (never written: overlay writes only to its
upper directory) with an upper and work directory of its own in the sandbox's scratch space,
private to that sandbox and removed with it: the sandbox may change what it sees there, and the
change stays its own. The mount is made as root of the host (nosuid, nodev) and attached only in
the sandbox's mount namespace; the sandbox gains no capability (it still cannot mount or
unmount anything itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers import Container
from kiln.containers.exec import ExecServer, ExecSpec
from kiln.errors import InvalidRequest, NotFound, SandboxUnavailable
from kiln.locks import Leases

# Layers of mounted images are held (as a container's are) so that no prune removes them.
_leases = Leases()


@dataclass
class ImageMount:
    """An image kiln mounted in a sandbox: the mount's root (device, inode), its own scratch
    directory (upper and work) and the layers it holds."""

    root: tuple[int, int]
    scratch: Path
    layers: list[Path] = field(default_factory=list)


async def _run_tool(
    server: ExecServer, tool: str, command: dict[str, object], stdin: int | None = None
) -> str:
    """Run one of kiln's tools in the sandbox under its confinement; its error text ("" on success)."""
    spec = ExecSpec([tool, json.dumps(command)], cwd="/", stdout="devnull", tool=tool)
    process = await server.run(spec, stdin=stdin)
    assert process.stderr is not None
    error = await process.stderr.read()
    code = await process.wait()
    if code == 0:
        return ""
    text = error.decode(errors="replace").strip()
    if tool == "fs_tools":
        try:
            text = str(json.loads(text)["message"])
        except (ValueError, KeyError, TypeError):
            pass
    return text or f"exit code {code}"


def _owner(container: Container) -> tuple[int, int]:
    """The host ids of the sandbox's root: those its own writable layer belongs to."""
    st = (container.scratch / "upper").stat()
    return st.st_uid, st.st_gid


async def copy_directory(server: ExecServer, container: Container, path: str, target: Path) -> None:
    """Copy the sandbox's directory `path` (resolved inside it) into the empty host directory
    `target`. The caller has the sandbox's processes stopped."""
    os.chown(target, *_owner(container))  # the copy runs as the sandbox's root
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        error = await _run_tool(server, "dir_copy", {"path": path}, stdin=fd)
    finally:
        os.close(fd)
    if error:
        raise InvalidRequest(f"snapshot_directory({path!r}): {error}")


async def mount(
    server: ExecServer, container: Container, mounts: dict[str, ImageMount], path: str, layers: list[Path]
) -> None:
    """Mount the image of `layers` (host directories, topmost first; none: an empty image) at
    the sandbox's `path`, made first if missing."""
    if path in mounts:
        raise InvalidRequest(
            f"an image is already mounted at {path} in this sandbox: unmount_image({path!r}) first, "
            "or mount at another path"
        )
    error = await _run_tool(server, "fs_tools", {"MakeDirectory": {"path": path, "parents": True}})
    if error:
        raise InvalidRequest(f"mount_image({path!r}): cannot make the mount point in the sandbox: {error}")
    scratch = container.scratch / "mounts" / uuid.uuid4().hex[:16]
    upper, work, empty = scratch / "upper", scratch / "work", scratch / "empty"
    for directory in (upper, work, empty):
        directory.mkdir(parents=True)
    uid, gid = _owner(container)
    for directory in (scratch.parent, scratch, upper, work):
        os.chown(directory, uid, gid)
    held = _leases.acquire(layers)
    try:
        root = await server.mount(path, layers or [empty], upper, work)
    except BaseException as exc:
        _leases.release(held)
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        if isinstance(exc, SandboxUnavailable):
            raise InvalidRequest(
                f"mount_image({path!r}): {exc}; mount at a directory of the sandbox (not a file)"
            ) from exc
        raise
    mounts[path] = ImageMount(root, scratch, held)


async def unmount(server: ExecServer, mounts: dict[str, ImageMount], path: str) -> None:
    """Unmount the image kiln mounted at `path`: what was there before shows again."""
    mounted = mounts.get(path)
    if mounted is None:
        known = ", ".join(sorted(mounts)) or "none"
        raise NotFound(
            f"no image is mounted at {path} in this sandbox (mounted: {known}); unmount_image takes "
            "the exact path given to mount_image"
        )
    try:
        await server.unmount(path, mounted.root)
    except SandboxUnavailable as exc:
        raise InvalidRequest(f"unmount_image({path!r}): {exc}") from exc
    del mounts[path]
    release(mounted)
    await asyncio.to_thread(shutil.rmtree, mounted.scratch, True)


def release(mounted: ImageMount) -> None:
    """Let the image's layers go (its files go with the sandbox's scratch space)."""
    _leases.release(mounted.layers)
    mounted.layers = []
