"""Layers a container uses stay on disk: shared leases for users, an exclusive try for deleters.

While a container runs, its runtime holds a shared `flock` on each of its lower directories;
whoever wants to delete a layer (`kiln image prune`, the size cap) takes an exclusive one
without waiting, and leaves the layer alone when that fails, in any process on the machine.
Containers and the image store both use these, so they live below both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


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


def hold_exclusive(path: Path) -> int | None:
    """Take an exclusive lock on `path` (created if missing) for as long as this process lives,
    or until the descriptor is closed; None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
