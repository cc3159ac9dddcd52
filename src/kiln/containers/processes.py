"""What a container's processes hold open, read from the host's /proc.

A container's processes are its helper's descendants. The host reads their descriptors' and
working directories' paths as the container sees them (the kernel prints a path in the mount
namespace it was opened in), which is what a check against a path inside the container needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (read from /proc; processes may come and go meanwhile)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, frontier = [pid], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


def open_paths(pid: int) -> Iterator[str]:
    """Paths of the files open, and the working directories, of the processes below `pid` that
    live in another mount namespace than this one (the container's, not its helper or pasta, whose
    paths are the host's)."""
    host = _mount_namespace("self")
    for process in descendants(pid):
        if _mount_namespace(str(process)) in (host, ""):
            continue
        for link in [f"/proc/{process}/cwd", *_fd_links(process)]:
            try:
                yield os.readlink(link)
            except OSError:
                continue  # closed meanwhile


def _mount_namespace(process: str) -> str:
    try:
        return os.readlink(f"/proc/{process}/ns/mnt")
    except OSError:
        return ""


def _fd_links(process: int) -> list[str]:
    try:
        return [f"/proc/{process}/fd/{fd}" for fd in os.listdir(f"/proc/{process}/fd")]
    except OSError:
        return []
