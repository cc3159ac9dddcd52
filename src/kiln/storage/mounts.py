"""Mounts: sets of files (path, content hash, mode), materialized as overlay layers.

A mount's ID is derived from its content, so the same files always give the same mount and
its materialized tree is built once and reused. Trees are hard links into the content store
(a copy only where the file's mode differs from the stored file's), so a new version of a
10,000-file directory costs 10,000 links, not 10,000 copies. Containers see them read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import InvalidRequest, NotFound
from kiln.ids import stable_id
from kiln.staging import remove_stale_staging, staging_name
from kiln.storage.blobs import BlobStore
from kiln.storage.state import StateStore

log = logging.getLogger("kiln.storage")


@dataclass(frozen=True)
class MountFile:
    path: str  # absolute path inside the container
    sha256: str
    mode: int = 0o644


class MountStore:
    def __init__(
        self, state: StateStore, blobs: BlobStore, root: Path, dir_owner: tuple[int, int] | None = None
    ) -> None:
        self.state = state
        self.blobs = blobs
        self.root = root
        # Who owns a tree's directories: root of the containers (uid, gid on the host). A mount's
        # directory merges with the image's (`/root`), and the topmost layer's owner is the
        # merged directory's, so the container must own it to write there. Files stay the
        # store's (hard links), read-only like every mount.
        self.dir_owner = dir_owner
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

    def trees(self) -> list[Path]:
        """Every materialized mount tree (for pruning)."""
        return [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def remove_tree(self, tree: Path) -> None:
        """Forget a materialized tree (it is made again on next use)."""
        for marker in self.root.glob(f"{tree.name}.compiled-*"):
            marker.unlink(missing_ok=True)
        trash = self.root / staging_name()
        os.rename(tree, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def layer(self, mount_id: str, python: Path | None = None) -> Path:
        """The mount's files as a directory tree to overlay at `/` (built once per mount).

        With `python` (an interpreter of the container's Python version), the tree's modules are
        also byte-compiled once, so containers do not each recompile them on every start.
        """
        target = self._materialize(mount_id)
        os.utime(target)  # last use, for pruning
        if python is not None:
            marker = target.parent / f"{mount_id}.compiled-{python.name}"
            if not marker.exists():
                # Only trees with modules: walking a 10,000-file data directory costs seconds.
                tops = sorted({f.path.split("/")[1] for f in self.files(mount_id) if f.path.endswith(".py")})
                started = time.perf_counter()
                if tops:
                    subprocess.run(
                        [
                            str(python),
                            "-m",
                            "compileall",
                            "-q",
                            "-j",
                            "0",
                            *(str(target / top) for top in tops),
                        ],
                        capture_output=True,
                        check=False,  # a module that does not compile still imports (and fails) in the container
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    log.info("mount %s: byte-compiled in %.0f ms", mount_id, elapsed_ms)
                marker.touch()
        return target

    def _materialize(self, mount_id: str) -> Path:
        target = self.root / mount_id
        if target.exists():
            if self.dir_owner is not None and os.stat(target).st_uid != self.dir_owner[0]:
                self._own_directories(target)  # a tree made before containers were unprivileged
            return target
        staging = self.root / staging_name()
        started = time.perf_counter()
        try:
            files = self.files(mount_id)
            made: set[Path] = set()
            for f in files:
                dest = staging / f.path.lstrip("/")
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                _link_or_copy(self.blobs.file_path(f.sha256), dest, f.mode & 0o7777 or 0o644)
            staging.mkdir(parents=True, exist_ok=True)
            self._own_directories(staging)
            os.rename(staging, target)
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info("mount %s: %d files laid out in %.0f ms", mount_id, len(files), elapsed_ms)
        except FileExistsError:
            shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.exists():
                raise
        return target

    def _own_directories(self, tree: Path) -> None:
        if self.dir_owner is None:
            return
        uid, gid = self.dir_owner
        for directory, _, _ in os.walk(tree):
            os.lchown(directory, uid, gid)


def _link_or_copy(source: Path, dest: Path, mode: int) -> None:
    # A hard link shares the stored file's mode, so only a file stored with this mount's mode
    # is linked. Containers cannot change it: mounts are read-only in them.
    if os.stat(source).st_mode & 0o7777 == mode:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass  # another filesystem, or too many links: copy
    shutil.copyfile(source, dest)
    os.chmod(dest, mode)
