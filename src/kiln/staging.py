"""Staging directories that belong to a process: a crashed process's leftovers can be removed
at the next start without touching the live staging of another server sharing KILN_HOME."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def staging_name() -> str:
    return f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_staging(root: Path) -> None:
    """Remove `.staging-<pid>-*` entries whose process is gone."""
    for entry in root.glob(".staging-*"):
        parts = entry.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_dir(root: Path, prefix: str = "", group: int | None = None) -> Path:
    """`root/<prefix><pid>`: this process's scratch directory. Those of processes that are gone
    (a server killed with SIGKILL cleans nothing up) are removed first. With `group` (the
    containers' gid), containers may walk through it to the directory each is given, and no further."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.glob(f"{prefix}*"):
        suffix = entry.name[len(prefix) :]
        if suffix.isdigit() and int(suffix) != os.getpid() and not _alive(int(suffix)):
            shutil.rmtree(entry, ignore_errors=True)
    mine = root / f"{prefix}{os.getpid()}"
    mine.mkdir(mode=0o700, exist_ok=True)
    if group is not None:
        os.chown(mine, -1, group)
        os.chmod(mine, 0o710)
    return mine
