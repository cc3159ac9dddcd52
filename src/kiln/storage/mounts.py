"""Mounts: sets of files (path, content hash, mode), materialized as overlay layers.

A mount's ID is derived from its content, so the same files always give the same mount and
its materialized tree (hard links into the content store) is built once and reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import InvalidRequest, NotFound
from kiln.ids import stable_id
from kiln.staging import remove_stale_staging, staging_name
from kiln.storage.blobs import BlobStore
from kiln.storage.state import StateStore


@dataclass(frozen=True)
class MountFile:
    path: str  # absolute path inside the container
    sha256: str
    mode: int = 0o644


class MountStore:
    def __init__(self, state: StateStore, blobs: BlobStore, root: Path) -> None:
        self.state = state
        self.blobs = blobs
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)

    def create(self, files: list[MountFile], name: str | None = None, namespace: str = "") -> str:
        missing = [f.path for f in files if not self.blobs.has_file(f.sha256)]
        if missing:
            raise InvalidRequest(
                f"mount files were never uploaded: {', '.join(missing[:5])}; upload them first"
            )
        for f in files:
            if not f.path.startswith("/") or ".." in f.path.split("/"):
                raise InvalidRequest(f"mount path {f.path!r} must be absolute and must not contain '..'")
        digest = hashlib.sha256()
        for f in sorted(files, key=lambda f: f.path):
            digest.update(f"{f.path}\0{f.sha256}\0{f.mode}\n".encode())
        mount_id = stable_id("mo", digest.hexdigest())
        data = {"files": [[f.path, f.sha256, f.mode] for f in files], "checksum": digest.hexdigest()}
        self.state.put("mounts", mount_id, data, name=name, namespace=namespace)
        return mount_id

    def checksum(self, mount_id: str) -> str:
        return str(self._record(mount_id)["checksum"])

    def lookup(self, name: str, namespace: str = "") -> str | None:
        found = self.state.find("mounts", name, namespace)
        return found[0] if found else None

    def _record(self, mount_id: str) -> dict[str, Any]:
        record = self.state.get("mounts", mount_id)
        if record is None:
            raise NotFound(f"Mount {mount_id} not found on this kiln server")
        return record

    def files(self, mount_id: str) -> list[MountFile]:
        files: list[list[Any]] = self._record(mount_id)["files"]
        return [MountFile(p, s, m) for p, s, m in files]

    def layer(self, mount_id: str, python: Path | None = None) -> Path:
        """The mount's files as a directory tree to overlay at `/` (built once per mount).

        With `python` (an interpreter of the container's Python version), the tree's modules are
        also byte-compiled once, so containers do not each recompile them on every start.
        """
        target = self._materialize(mount_id)
        if python is not None:
            marker = target.parent / f"{mount_id}.compiled-{python.name}"
            if not marker.exists():
                subprocess.run(
                    [str(python), "-m", "compileall", "-q", "-j", "0", str(target)],
                    capture_output=True,
                    check=False,  # a module that does not compile still imports (and fails) in the container
                )
                marker.touch()
        return target

    def _materialize(self, mount_id: str) -> Path:
        target = self.root / mount_id
        if target.exists():
            return target
        staging = self.root / staging_name()
        try:
            for f in self.files(mount_id):
                dest = staging / f.path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = self.blobs.file_path(f.sha256)
                # A copy, not a hard link: the file's mode belongs to this mount, not to the content.
                shutil.copyfile(source, dest)
                os.chmod(dest, f.mode & 0o7777 or 0o644)
            staging.mkdir(parents=True, exist_ok=True)
            os.rename(staging, target)
        except FileExistsError:
            shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.exists():
                raise
        return target
