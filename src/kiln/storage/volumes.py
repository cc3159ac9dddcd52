"""Volumes: directory trees under KILN_HOME that containers mount and clients upload to.

A volume is `volumes/<vo-id>/`, a real directory tree, bind-mounted into every container that
mounts it (read-only for read-only mounts, a subdirectory for `sub_path`): containers share one
live tree, so a write is visible to every other container at once, and commit/reload have
nothing to move (`commit` syncs the filesystem). Names, lifetimes (named, ephemeral, owned by an
app) and listing are `NamedObjects`'s; a volume's row is committed before it is acknowledged and
its tree removed when it is deleted, which frees the disk space.

Uploads come in the Modal client's 8 MiB blocks, content-addressed by sha256:
`volume-blocks/<vo-id>/<sha256>` holds each block received (per volume, so deleting a volume
frees its blocks too). A file is assembled from its blocks in `volume-blocks/<vo-id>/tmp` (same
filesystem, outside the tree), synced and renamed into place. Blocks are kept for
`BLOCK_RETENTION` seconds after their last use so that a client re-sending an upload (a lost
answer, a resumed `modal volume put`) finds them, then swept.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InvalidRequest
from kiln.ids import new_id
from kiln.storage.named import DEFAULT_EPHEMERAL_GRACE, IfExists, NamedObjects, StoredObject
from kiln.storage.state import StateStore
from kiln.storage.volume_tree import BLOCK_SIZE, VolumeTree, block_count, join, split_path

BLOCK_RETENTION = 3600.0  # seconds a block is kept after its last use
MAX_FILE_SIZE = 2**44  # 16 TiB: ext4's largest file
EMPTY_BLOCK = hashlib.sha256(b"").digest()  # an all-zero block: the client strips trailing zeros


@dataclass(frozen=True)
class FileUpload:
    """A file a client uploads: its path, size, mode and the sha256 of each block's bytes (the
    client leaves out a block's trailing zeros; an all-zero block hashes as empty)."""

    parts: tuple[str, ...]
    size: int
    mode: int
    blocks: list[bytes]

    @classmethod
    def of(cls, path: str, size: int, mode: int, blocks: list[bytes]) -> FileUpload:
        parts = split_path(path)
        if not parts:
            raise InvalidRequest(f"{path!r} names the volume's root; a file needs a path inside the volume")
        if not 0 <= size <= MAX_FILE_SIZE:
            raise InvalidRequest(
                f"{path!r}: a file in a volume has between 0 and {MAX_FILE_SIZE} bytes, not {size}"
            )
        if len(blocks) != block_count(size):
            raise InvalidRequest(
                f"{path!r}: a file of {size} bytes has {block_count(size)} blocks of 8 MiB, not {len(blocks)}"
            )
        if any(len(b) != 32 for b in blocks):
            raise InvalidRequest(f"{path!r}: every block needs its 32-byte sha256")
        return cls(parts, size, mode or 0o644, blocks)


class Volumes(NamedObjects):
    kind = "Volume"

    def __init__(
        self,
        state: StateStore,
        root: Path,
        blocks_root: Path,
        owner: tuple[int, int] | None = None,
        clock: Callable[[], float] = time.time,
        ephemeral_grace: float = DEFAULT_EPHEMERAL_GRACE,
    ) -> None:
        super().__init__(state, "volumes", "vo", [], clock, ephemeral_grace)
        self.root = root
        self.blocks_root = blocks_root
        self.owner = owner
        root.mkdir(parents=True, exist_ok=True)
        blocks_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if owner is not None:
            # The sandbox helper (the containers' ids) walks through to the trees it binds.
            os.chown(root, 0, owner[1])
            os.chmod(root, 0o710)

    # --- trees

    def tree(self, volume_id: str) -> VolumeTree:
        """The volume's tree (NotFound once the volume is deleted)."""
        self._require(volume_id)
        root = self.root / volume_id
        staging = self.blocks_root / volume_id / "tmp"
        if not staging.exists():
            staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not root.exists():
            with contextlib.suppress(FileExistsError):
                root.mkdir(mode=0o755)
                if self.owner is not None:
                    os.chown(root, *self.owner)
        return VolumeTree(root, staging, self.owner)

    def mount_source(self, volume_id: str, sub_path: str = "") -> Path:
        """The host directory to bind for a mount of the volume (its `sub_path`, made if missing
        as Modal does, through real directories only)."""
        tree = self.tree(volume_id)
        parts = split_path(sub_path)
        with tree.directory(parts, create=True):
            pass
        return tree.root.joinpath(*parts)

    def sync(self, volume_id: str) -> None:
        """Flush the volume's filesystem to disk (a container's `commit`)."""
        fd = os.open(self.tree(volume_id).root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc().syncfs(fd) != 0:
                os.fsync(fd)
        finally:
            os.close(fd)

    # --- blocks

    def _blocks_dir(self, volume_id: str) -> Path:
        return self.blocks_root / volume_id

    def block_path(self, volume_id: str, sha256: bytes) -> Path:
        return self._blocks_dir(volume_id) / sha256.hex()

    def missing_blocks(self, volume_id: str, digests: Iterable[bytes]) -> set[bytes]:
        """Which of `digests` this volume holds no block for (the empty block is always held);
        those it holds are kept for another `BLOCK_RETENTION`."""
        self._require(volume_id)
        missing = set()
        now = self._clock()
        for digest in set(digests) - {EMPTY_BLOCK}:
            path = self.block_path(volume_id, digest)
            try:
                os.utime(path, (now, now))
            except FileNotFoundError:
                missing.add(digest)
        return missing

    def staging_file(self, volume_id: str) -> tuple[int, Path]:
        """A new file (descriptor, path) to receive a block into before `commit_block`."""
        tree = self.tree(volume_id)
        path = tree.staging / f"{new_id('bk')}.block"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path

    def commit_block(self, volume_id: str, received: Path, sha256: bytes) -> None:
        """Keep a received block under its digest (the caller checked it)."""
        self._require(volume_id)
        os.replace(received, self.block_path(volume_id, sha256))

    def put_files(self, volume_id: str, files: list[FileUpload], overwrite: bool) -> None:
        """Assemble each file from its blocks (all held: `missing_blocks` said so) into the tree;
        the last writer of a path wins. Without `overwrite`, an existing file is FileExists."""
        tree = self.tree(volume_id)
        for upload in files:
            opened: list[int] = []
            try:
                pieces = []
                for index, digest in enumerate(upload.blocks):
                    if digest == EMPTY_BLOCK:
                        continue  # zeros: the file is made sparse, all zero, first
                    try:
                        fd = os.open(self.block_path(volume_id, digest), os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        raise InvalidRequest(
                            f"{join(upload.parts)!r}: block {index} has not been uploaded (or was swept after "
                            f"{BLOCK_RETENTION:.0f} s); upload the file again"
                        ) from None
                    opened.append(fd)
                    length = os.fstat(fd).st_size
                    limit = min(BLOCK_SIZE, upload.size - index * BLOCK_SIZE)
                    if length > limit:
                        raise InvalidRequest(
                            f"{join(upload.parts)!r}: block {index} holds {length} bytes, more than the "
                            f"{limit} the file's size leaves for it"
                        )
                    pieces.append((fd, 0, index * BLOCK_SIZE, length))
                tree.write_file(upload.parts, upload.size, upload.mode, pieces, overwrite)
            finally:
                for fd in opened:
                    os.close(fd)

    def sweep_blocks(self) -> int:
        """Remove blocks unused for `BLOCK_RETENTION` seconds, and half-received ones; returns
        how many went."""
        cutoff = self._clock() - BLOCK_RETENTION
        removed = 0
        for volume_dir in self.blocks_root.iterdir() if self.blocks_root.exists() else []:
            for path in [*volume_dir.glob("*"), *volume_dir.glob("tmp/*")]:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed

    # --- names and lifetimes

    def create(
        self, name: str, environment: str, if_exists: IfExists = IfExists.REUSE
    ) -> tuple[StoredObject, bool]:
        replaced = self.lookup(name, environment) if if_exists is IfExists.REPLACE else None
        obj, created = super().create(name, environment, if_exists)
        if replaced is not None:
            self._deleted([replaced.object_id])
        return obj, created

    def rename(self, volume_id: str, name: str) -> None:
        """Give a named volume a new name in its environment (AlreadyExists-worthy if taken:
        raises FileExistsError for the caller to translate)."""
        with self.state.transaction():
            obj = self.info(volume_id)
            if not obj.name:
                raise InvalidRequest(f"{volume_id} is an anonymous volume; only named volumes can be renamed")
            if self.lookup(name, obj.environment) is not None:
                raise FileExistsError(name)
            self.state.execute("UPDATE volumes SET name = ? WHERE id = ?", (name, volume_id))

    def _deleted(self, object_ids: list[str]) -> None:
        """Move the volumes' files aside at once (a rename), and remove them in the background:
        a large tree takes a while, and nobody waits for it."""
        trash = self.blocks_root / "trash"
        trash.mkdir(mode=0o700, exist_ok=True)
        moved = []
        for volume_id in object_ids:
            for path in (self.root / volume_id, self._blocks_dir(volume_id)):
                target = trash / f"{path.parent.name}-{volume_id}-{new_id('rm')}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, target)
                    moved.append(target)
        if moved:
            threading.Thread(
                target=_remove_all, args=(moved,), name="kiln-volume-removal", daemon=True
            ).start()

    def remove_orphans(self) -> list[str]:
        """Remove trees and blocks of volumes with no row (a crash between a delete's commit and
        the removal of its files); returns their IDs."""
        known = {row[0] for row in self.state.query("SELECT id FROM volumes")}
        _remove(self.blocks_root / "trash")  # what a stopped server had not finished removing
        orphans = set()
        for parent in (self.root, self.blocks_root):
            for path in parent.iterdir():
                if path.name.startswith("vo-") and path.name not in known:
                    orphans.add(path.name)
        self._deleted(sorted(orphans))
        return sorted(orphans)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: links inside are not followed


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        _remove(path)


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC
