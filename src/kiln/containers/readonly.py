"""Mounts are read-only inside a container, and the layers a container uses stay on disk.

A container's mounts (the user's local files, the client package) are overlay layers like the
image's, so they merge with the image and with each other. On top of the overlay, every path a
mount provides is bound again read-only: a process can read it but cannot write over it, as
with Modal's mounts. Bound are the largest subtrees that belong to the mounts alone, so a
directory the image also has (`/root`) stays writable and only the mounts' entries in it are
read-only.

While a container runs, its runtime holds a shared `flock` on each of its lower directories;
whoever wants to delete a layer (`kiln image prune`, the size cap) takes an exclusive one
without waiting, and leaves the layer alone when that fails, in any process on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path


def read_only_paths(mounts: list[Path], image_layers: list[Path]) -> list[str]:
    """Absolute paths (in the container) to bind read-only so that every mount file is covered."""
    paths: list[str] = []

    def visit(rel: str) -> None:
        names: set[str] = set()
        for mount in mounts:
            with contextlib.suppress(OSError):
                names.update(os.listdir(mount / rel if rel else mount))
        for name in sorted(names):
            child = f"{rel}/{name}" if rel else name
            from_mount_dir = any(_is_dir(mount / child) for mount in mounts)
            if from_mount_dir and any(_is_dir(layer / child) for layer in image_layers):
                visit(child)  # the image has this directory too: only the mounts' entries are bound
            else:
                paths.append("/" + child)

    visit("")
    return paths


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class Leases:
    """Shared locks on directories while containers use them: one lock per directory per
    process, counted, so a thousand containers on the same image cost one descriptor per layer."""

    def __init__(self) -> None:
        self._held: dict[Path, list[int]] = {}  # directory → [descriptor, users]

    def acquire(self, directories: list[Path]) -> list[Path]:
        """Lock `directories` (those that exist); returns what to `release` later."""
        taken = []
        for directory in directories:
            held = self._held.get(directory)
            if held is None:
                try:
                    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError:
                    continue
                fcntl.flock(fd, fcntl.LOCK_SH)
                held = self._held[directory] = [fd, 0]
            held[1] += 1
            taken.append(directory)
        return taken

    def release(self, directories: list[Path]) -> None:
        for directory in directories:
            held = self._held[directory]
            held[1] -= 1
            if held[1] == 0:
                os.close(held[0])
                del self._held[directory]


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[bool]:
    """Yields whether no running container (of any process) uses `directory`; while the block
    runs, none can start using it through a runtime."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
