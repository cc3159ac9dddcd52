"""A volume's files: a real directory tree that containers write to, read and changed by the server
without ever following a link.

Containers are hostile and the tree is theirs: any name in it may be a symbolic link (to the
host's `/etc`), a FIFO or a device by the time the server looks. So every path is walked one
component at a time from a descriptor of the tree's root, each step opened with `O_NOFOLLOW`
relative to the one before (`openat`), and files are opened non-blocking and checked to be
regular before a byte is read. A link is listed as a link and never followed; a path through one
is refused. The server runs as root: a single followed link would let `modal volume get` read
the host's files, or `modal volume put` overwrite them.

Paths are volume-relative and POSIX (`/a/b` and `a/b` are the same file); `..` is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InvalidRequest, NotFound

BLOCK_SIZE = 8 * 2**20  # the Modal client's block (its `BLOCK_SIZE`)
_MAX_PATH = 4096
_MAX_NAME = 255  # bytes, as Linux filesystems allow
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 2**30


class FileExists(InvalidRequest):
    """A file is where an upload that may not overwrite would go (or a directory is there)."""


# --- pure: paths and blocks ------------------------------------------------------------------


def split_path(path: str) -> tuple[str, ...]:
    """The components of a volume path (`()` for the root); `..`, NUL and over-long paths are
    refused. `.` and empty components (`a//b`, a trailing `/`) are dropped."""
    if len(path) > _MAX_PATH:
        raise InvalidRequest(f"a volume path is at most {_MAX_PATH} characters; this one has {len(path)}")
    if "\0" in path:
        raise InvalidRequest("a volume path may not contain a NUL character")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if any(len(os.fsencode(p)) > _MAX_NAME for p in parts):
        raise InvalidRequest(
            f"a name in a volume path is at most {_MAX_NAME} bytes; shorten the path {path[:80]!r}…"
        )
    if ".." in parts:
        raise InvalidRequest(
            f"volume path {path!r} contains '..'; name files by their path from the volume's root"
        )
    return parts


def join(parts: tuple[str, ...]) -> str:
    """A path as the client lists it: relative to the root, no leading slash."""
    return "/".join(parts)


def block_count(size: int) -> int:
    """How many blocks a file of `size` bytes has."""
    return -(-size // BLOCK_SIZE)


def block_ranges(start: int, length: int) -> list[tuple[int, int]]:
    """(offset, length) of the pieces of [start, start + length) that fall into each block."""
    ranges = []
    position, end = start, start + length
    while position < end:
        block_end = min(end, (position // BLOCK_SIZE + 1) * BLOCK_SIZE)
        ranges.append((position, block_end - position))
        position = block_end
    return ranges


# --- the tree --------------------------------------------------------------------------------


class FileType:
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 0


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the root
    type: int  # a FileType
    mtime: int
    size: int


def _not_found(what: str, parts: tuple[str, ...]) -> NotFound:
    return NotFound(f"no {what} {join(parts)!r} in this volume (see what is there with `modal volume ls`)")


def _printable(name: str) -> str:
    """A name a container wrote in bytes that are not UTF-8 (what the protocol carries) is listed
    with U+FFFD in their place; it cannot be read through the API by that name."""
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode(errors="replace")


def _type_of(mode: int) -> int:
    if stat.S_ISREG(mode):
        return FileType.FILE
    if stat.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileType.SYMLINK
    return FileType.OTHER


class VolumeTree:
    """One volume's directory tree. `staging` is a directory on the same filesystem (outside the
    tree, so containers never see half-written files) where new files are made before they are
    renamed into place. `owner` is the (uid, gid) new files and directories get: the containers'
    root, so that code in a container may change what the server wrote."""

    def __init__(self, root: Path, staging: Path, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.staging = staging
        self.owner = owner

    # -- walking

    @contextlib.contextmanager
    def directory(self, parts: tuple[str, ...], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory at `parts`, walked without following links; with
        `create`, missing directories are made (owned by `owner`)."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for i, name in enumerate(parts):
                child = self._step(fd, name, parts[: i + 1], create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _step(self, fd: int, name: str, walked: tuple[str, ...], create: bool) -> int:
        try:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise _not_found("directory", walked) from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                    self._own(name, fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InvalidRequest(
                    f"{join(walked)!r} in this volume is not a directory (a file or a symbolic link; kiln "
                    "never follows links inside a volume): use a path through real directories"
                ) from None
            raise
        return child

    def _own(self, name: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def lstat(self, parts: tuple[str, ...]) -> os.stat_result:
        """The entry at `parts` itself (a link is not followed); NotFound if missing."""
        if not parts:
            return os.stat(self.root)
        with self.directory(parts[:-1]) as fd:
            try:
                return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise _not_found("file or directory", parts) from None

    def open_file(self, parts: tuple[str, ...]) -> int:
        """A read-only descriptor of the regular file at `parts` (never a link, FIFO or device)."""
        if not parts:
            raise InvalidRequest("the volume's root is a directory, not a file")
        with self.directory(parts[:-1]) as dir_fd:
            try:
                fd = os.open(
                    parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
                )
            except FileNotFoundError:
                raise _not_found("file", parts) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InvalidRequest(
                        f"{join(parts)!r} in this volume is a symbolic link; kiln never follows links "
                        "inside a volume: read the file it points to by its own path"
                    ) from None
                raise InvalidRequest(  # a socket (ENXIO), …
                    f"{join(parts)!r} in this volume is not a regular file; only regular files can be read"
                ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidRequest(f"{join(parts)!r} in this volume is {what}; only regular files can be read")
        return fd

    # -- listing

    def entries(self, parts: tuple[str, ...], recursive: bool) -> Iterator[Entry]:
        """The entries of the directory at `parts` (all below it when `recursive`), or the entry
        of the file at `parts`. Links are listed, never followed."""
        st = self.lstat(parts)
        if not stat.S_ISDIR(st.st_mode):
            yield Entry(join(parts), _type_of(st.st_mode), max(0, int(st.st_mtime)), st.st_size)
            return
        with self.directory(parts) as fd:
            yield from self._list_dir(os.dup(fd), parts, recursive)

    def _list_dir(self, fd: int, parts: tuple[str, ...], recursive: bool) -> Iterator[Entry]:
        subdirs = []
        try:
            with os.scandir(fd) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    kind = _type_of(st.st_mode)
                    size = st.st_size if kind == FileType.FILE else 0
                    yield Entry(join((*parts, _printable(entry.name))), kind, max(0, int(st.st_mtime)), size)
                    if recursive and kind == FileType.DIRECTORY:
                        subdirs.append(entry.name)
            for name in subdirs:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # removed or replaced by a link while listing: not followed
                yield from self._list_dir(child, (*parts, name), recursive)
        finally:
            os.close(fd)

    # -- changing

    def remove(self, parts: tuple[str, ...], recursive: bool) -> None:
        """Remove the file, link or (with `recursive`) directory at `parts`; the root's contents
        for `()`."""
        if not parts:
            if not recursive:
                raise InvalidRequest("removing the volume's root needs recursive=True (`modal volume rm -r`)")
            with self.directory(()) as fd:
                for name in os.listdir(fd):
                    self._remove_entry(fd, name, (name,), recursive=True)
            return
        with self.directory(parts[:-1]) as fd:
            self._remove_entry(fd, parts[-1], parts, recursive)

    def _remove_entry(self, dir_fd: int, name: str, parts: tuple[str, ...], recursive: bool) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _not_found("file or directory", parts) from None
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
        elif not recursive:
            raise InvalidRequest(
                f"{join(parts)!r} is a directory: pass recursive=True (`modal volume rm -r`) to remove it"
            )
        else:
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based on Linux: never follows a link

    def copy(self, sources: list[tuple[str, ...]], destination: tuple[str, ...], recursive: bool) -> None:
        """`cp` within the volume: one source to a new name, or sources into a directory (made if
        missing when there are several, or when the destination is the root)."""
        if not sources:
            raise InvalidRequest("copy_files needs at least one source path")
        try:
            into_dir = not destination or stat.S_ISDIR(self.lstat(destination).st_mode)
        except NotFound:
            into_dir = len(sources) > 1
        for source in sources:
            if not source:
                raise InvalidRequest("the volume's root cannot be copied; copy the paths inside it")
            target = (*destination, source[-1]) if into_dir else destination
            if target[: len(source)] == source:
                raise InvalidRequest(f"cannot copy {join(source)!r} into itself ({join(target)!r})")
            self._copy_entry(source, target, recursive)

    def _copy_entry(self, source: tuple[str, ...], target: tuple[str, ...], recursive: bool) -> None:
        st = self.lstat(source)
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise InvalidRequest(
                    f"{join(source)!r} is a directory: pass recursive=True (`modal volume cp -r`) to copy it"
                )
            with self.directory(target, create=True):
                pass
            for entry in list(self.entries(source, recursive=False)):
                name = entry.path.rsplit("/", 1)[-1]
                self._copy_entry((*source, name), (*target, name), recursive)
        elif stat.S_ISREG(st.st_mode):
            src = self.open_file(source)
            try:
                self.write_file(target, st.st_size, stat.S_IMODE(st.st_mode), [(src, 0, 0, st.st_size)])
            finally:
                os.close(src)
        elif stat.S_ISLNK(st.st_mode):
            with self.directory(source[:-1]) as fd:
                link = os.readlink(source[-1], dir_fd=fd)
            with self.directory(target[:-1], create=True) as fd:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target[-1], dir_fd=fd)
                os.symlink(link, target[-1], dir_fd=fd)
                self._own(target[-1], fd)
        # FIFOs, sockets and devices are not copied.

    def write_file(
        self,
        parts: tuple[str, ...],
        size: int,
        mode: int,
        pieces: list[tuple[int, int, int, int]],
        overwrite: bool = True,
    ) -> None:
        """Make the file at `parts` (parents made as needed): `size` bytes, zero where no piece
        covers, each piece `(source fd, source offset, file offset, length)` copied in by the
        kernel. Written in the staging directory, synced, then renamed into place: readers see
        the old file or the new one, and the last writer wins. Without `overwrite`, an existing
        file stays and FileExists is raised."""
        if not parts:
            raise InvalidRequest("a file needs a path inside the volume, not its root")
        name = f"{uuid.uuid4().hex}.part"
        staging = os.open(self.staging, _DIR_FLAGS)
        try:
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=staging)
            try:
                os.ftruncate(out, size)  # zeros (sparse) wherever no piece writes
                for src, src_offset, offset, length in pieces:
                    _copy_range(src, src_offset, out, offset, length)
                os.fchmod(out, mode & 0o777)
                if self.owner is not None:
                    os.fchown(out, *self.owner)
                os.fsync(out)
            finally:
                os.close(out)
            with self.directory(parts[:-1], create=True) as dir_fd:
                self._install(staging, name, dir_fd, parts, overwrite)
                os.fsync(dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=staging)
            os.close(staging)

    def _install(self, staging: int, name: str, dir_fd: int, parts: tuple[str, ...], overwrite: bool) -> None:
        try:
            existing = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise FileExists(f"{join(parts)!r} is a directory in this volume; a file cannot replace it")
        if overwrite:
            os.rename(name, parts[-1], src_dir_fd=staging, dst_dir_fd=dir_fd)
            return
        try:
            # link() never replaces: an upload that may not overwrite cannot, even in a race.
            os.link(name, parts[-1], src_dir_fd=staging, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise FileExists(
                f"{join(parts)!r} already exists in this volume; pass force=True (`modal volume put -f`, "
                "`batch_upload(force=True)`) to overwrite it"
            ) from None

    def check_absent(self, parts: tuple[str, ...]) -> None:
        """FileExists if something is at `parts` (an upload that may not overwrite checks first,
        before its blocks travel)."""
        try:
            st = self.lstat(parts)
        except (NotFound, InvalidRequest):
            return
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
        raise FileExists(
            f"{join(parts)!r} already exists in this volume ({what}); pass force=True (`modal volume put -f`, "
            "`batch_upload(force=True)`) to overwrite a file"
        )


def _copy_range(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
    """Copy in the kernel (copy_file_range: a reflink or an in-kernel copy), falling back to
    reads and writes where the filesystem refuses."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(
                src, dst, min(length - done, _COPY_CHUNK), src_offset + done, dst_offset + done
            )
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = _copy_by_hand(src, src_offset + done, dst, dst_offset + done, length - done)
        if n == 0:
            raise InvalidRequest("a source file became shorter while it was being copied; copy it again")
        done += n


def _copy_by_hand(src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> int:
    data = os.pread(src, min(length, 2**20), src_offset)
    if data:
        os.pwrite(dst, data, dst_offset)
    return len(data)
