"""Mounts are read-only inside a container.

A container's mounts (the user's local files, the client package) are overlay layers like the
image's, so they merge with the image and with each other. On top of the overlay, every path a
mount provides is bound again read-only: a process can read it but cannot write over it, as
with Modal's mounts. Bound are the largest subtrees that belong to the mounts alone, so a
directory the image also has (`/root`) stays writable and only the mounts' entries in it are
read-only.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
