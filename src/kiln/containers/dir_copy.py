"""`Sandbox.snapshot_directory(path)`'s copy, run by the exec server as a tool (like `fs_tools`):
loaded before entering, run after every confinement step (the sandbox's namespaces, root, user,
capabilities and seccomp filter), so it reads exactly what the sandbox's root may read, through
the sandbox's own view, and nothing of the host.

Its one way out is descriptor 0: the new layer's (empty) directory on the host, opened by kiln,
owned by the sandbox's root. The copy writes only below it, by names relative to directories it
created itself; the sandbox's processes are stopped meanwhile, and this process makes itself
non-dumpable first, so none of them can reach that descriptor through /proc.

- The path is resolved inside the sandbox's root with openat2 `RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS`: the sandbox's symbolic links lead where they lead in the sandbox, and
  no `/proc/self/fd/…` link can lead to descriptor 0 or out of the root.
- Below it nothing is followed: every entry is opened by its single name with O_NOFOLLOW, and a
  symbolic link is copied as a link.
- Kept: files, directories, links, FIFOs, with modes, owners and modification times. Left out:
  device nodes and sockets (the sandbox could not create them in a layer either), extended
  attributes, and other file systems mounted below the path (as `cp -x`). Hard links become
  separate copies.

Standard library only, imported up front (after the chroot the host's library is out of reach).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat

PR_SET_DUMPABLE = 4
_SYS_OPENAT2 = 437  # the same number on every architecture kiln runs on (x86_64, aarch64)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root: int, path: str, flags: int) -> int:
    """`path` opened as if `root` were `/`: links resolved inside it, magic links refused."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    _libc.syscall.restype = ctypes.c_long
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(root),
        ctypes.c_char_p(path.lstrip("/").encode() or b"."),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    return int(fd)


def run(command_json: str) -> int:
    """Copy the directory `{"path": …}` names into descriptor 0; exit code 0, or 1 with the
    reason on stderr."""
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    path = json.loads(command_json)["path"]
    try:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            source = open_in_root(root, path, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(root)
        try:
            target = os.dup(0)
            try:
                _copy_tree(source, target, os.fstat(source).st_dev)
                _copy_attributes(source, target)
            finally:
                os.close(target)
        finally:
            os.close(source)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            message = f"{path} is not a directory in the sandbox: snapshot_directory takes a directory"
        elif exc.errno == errno.ENOENT and exc.filename == path:
            message = (
                f"{path} does not exist in the sandbox: create it first, or name a directory that exists"
            )
        else:
            message = f"cannot copy {path}: {exc.strerror or exc}" + (
                f" ({exc.filename})" if exc.filename and exc.filename != path else ""
            )
        os.write(2, message.encode())
        return 1
    return 0


def _copy_tree(source: int, target: int, device: int) -> None:
    for name in os.listdir(source):
        st = os.stat(name, dir_fd=source, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if st.st_dev != device:
                continue  # another file system mounted here
            os.mkdir(name, 0o700, dir_fd=target)
            child_source = os.open(name, _DIR, dir_fd=source)
            try:
                child_target = os.open(name, _DIR, dir_fd=target)
                try:
                    _copy_tree(child_source, child_target, device)
                    _copy_attributes(child_source, child_target)
                finally:
                    os.close(child_target)
            finally:
                os.close(child_source)
        elif stat.S_ISREG(mode):
            _copy_file(source, target, name)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=source), name, dir_fd=target)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=target, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=target, follow_symlinks=False)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=target)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=target, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=target)  # the FIFO just made, by its name
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=target, follow_symlinks=False)


def _copy_file(source: int, target: int, name: str) -> None:
    reader = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source)
    try:
        if not stat.S_ISREG(os.fstat(reader).st_mode):
            return  # swapped since it was listed
        writer = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=target
        )
        try:
            while True:
                chunk = os.read(reader, _CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(writer, view) :]
            _copy_attributes(reader, writer)
        finally:
            os.close(writer)
    finally:
        os.close(reader)


def _copy_attributes(source: int, target: int) -> None:
    """Owner first (a chown clears setuid bits), then mode, then times."""
    st = os.fstat(source)
    os.fchown(target, st.st_uid, st.st_gid)
    os.fchmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
