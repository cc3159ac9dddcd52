"""The sandbox filesystem tool the Modal client execs (`/__modal/.bin/modal-sandbox-fs-tools
'{"ReadFile": {...}}'`), implemented by kiln's enter helper itself.

The helper loads this module before it enters the sandbox, then, confined exactly as any exec
(the sandbox's namespaces, root, user, capabilities and seccomp filter), runs the command here
instead of exec'ing a program: images need no tool of ours and no Python. Standard library
only, everything imported up front (after the chroot, the host's library is out of reach);
user and group names are read from the sandbox's own /etc/passwd and /etc/group.

Output follows the client's parser (`modal/_utils/sandbox_fs_utils.py`): file contents or JSON on
stdout; on failure a JSON `{"error_kind", "message"}` on stderr and exit code 1.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import stat
import struct
import sys
import time
from typing import Any

_CHUNK = 1 << 20
_KINDS = {
    errno.ENOENT: "NotFound",
    errno.ENOTDIR: "NotDirectory",
    errno.EISDIR: "IsDirectory",
    errno.EACCES: "PermissionDenied",
    errno.EPERM: "PermissionDenied",
    errno.EEXIST: "PathAlreadyExists",
    errno.ENOTEMPTY: "DirectoryNotEmpty",
}


class ToolError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def run(command_json: str) -> int:
    """Run one command; its exit code."""
    try:
        command = json.loads(command_json)
        ((name, args),) = command.items()
        handler = _COMMANDS.get(name)
        if handler is None:
            raise ToolError("NotSupported", f"kiln's sandboxes do not support {name}")
        handler(args)
    except ToolError as exc:
        _error(exc.kind, str(exc))
        return 1
    except OSError as exc:
        _error(_KINDS.get(exc.errno or 0, "Other"), exc.strerror or str(exc))
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        _error("InvalidArgument", f"not a filesystem command: {exc}")
        return 2
    return 0


def _error(kind: str, message: str) -> None:
    os.write(2, json.dumps({"error_kind": kind, "message": message}).encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_file(args: dict[str, Any]) -> None:
    path = args["path"]
    if os.path.isdir(path):
        raise ToolError("IsDirectory", "is a directory")
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            _write_all(1, chunk)


def write_file(args: dict[str, Any]) -> None:
    path = args["path"]
    parent = os.path.dirname(path)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except FileExistsError:
            raise ToolError("NotDirectory", "a parent of the path is not a directory") from None
    if os.path.isdir(path):
        raise ToolError("IsDirectory", "is a directory")
    with open(path, "wb") as f:
        while chunk := os.read(0, _CHUNK):
            f.write(chunk)


def list_files(args: dict[str, Any]) -> None:
    path = args["path"]
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise ToolError("NotDirectory", "is not a directory")
        raise ToolError("NotFound", "no such directory")
    entries = [_entry(os.path.join(path, name)) for name in sorted(os.listdir(path))]
    _write_all(1, json.dumps(entries).encode())


def make_directory(args: dict[str, Any]) -> None:
    path = args["path"]
    if args.get("parents", True):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ToolError("PathAlreadyExists", "exists and is not a directory")
        try:
            os.makedirs(path, exist_ok=True)
        except FileExistsError:
            raise ToolError("NotDirectory", "a parent of the path is not a directory") from None
    else:
        os.mkdir(path)


def remove(args: dict[str, Any]) -> None:
    path = args["path"]
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif args.get("recursive"):
        shutil.rmtree(path)
    else:
        os.rmdir(path)


def stat_path(args: dict[str, Any]) -> None:
    _write_all(1, json.dumps(_entry(args["path"])).encode())


def _entry(path: str) -> dict[str, Any]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind, target = "symlink", os.readlink(path)
    else:
        kind, target = ("directory" if stat.S_ISDIR(st.st_mode) else "file"), None
    return {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "permissions": stat.filemode(st.st_mode),
        "owner": _names("/etc/passwd").get(st.st_uid, str(st.st_uid)),
        "group": _names("/etc/group").get(st.st_gid, str(st.st_gid)),
        "modified_time": st.st_mtime,
        "symlink_target": target,
    }


_NAME_CACHE: dict[str, dict[int, str]] = {}


def _names(table: str) -> dict[int, str]:
    if table not in _NAME_CACHE:
        names: dict[int, str] = {}
        try:
            with open(table) as f:
                for line in f:
                    fields = line.split(":")
                    if len(fields) > 2 and fields[2].isdigit():
                        names.setdefault(int(fields[2]), fields[0])
        except OSError:
            pass
        _NAME_CACHE[table] = names
    return _NAME_CACHE[table]


# --- watch (inotify)

_IN = {
    "Access": 0x001, "Modify": 0x002 | 0x004, "Create": 0x100, "Remove": 0x200 | 0x400,
    "RenameFrom": 0x040, "RenameTo": 0x080,
}  # fmt: skip
_IN_ISDIR = 0x40000000
_IN_IGNORED = 0x8000
_libc = ctypes.CDLL(None, use_errno=True)


def watch(args: dict[str, Any]) -> None:
    path = os.path.realpath(args["path"])
    os.stat(path)  # NotFound before anything else
    wanted = set(
        args.get("filter") or ["Access", "Create", "Modify", "Remove", "Rename", "RenameFrom", "RenameTo"]
    )
    timeout = args.get("timeout_secs")
    deadline = time.monotonic() + timeout if timeout else None
    fd = _libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    mask = sum(_IN.values())
    watches: dict[int, str] = {}

    def add(directory: str) -> None:
        wd = _libc.inotify_add_watch(fd, directory.encode(), mask)
        if wd >= 0:
            watches[wd] = directory

    add(path)
    if args.get("recursive") and os.path.isdir(path):
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                add(os.path.join(root, name))
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            return
        ready, _, _ = select.select([fd, 0], [], [], wait)
        if 0 in ready and not os.read(0, 4096):
            return  # the client closed our stdin: it stopped watching
        if fd not in ready:
            continue
        data = os.read(fd, 65536)
        offset = 0
        while offset + 16 <= len(data):
            wd, event_mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode(errors="replace")
            offset += 16 + length
            if event_mask & _IN_IGNORED:
                continue
            base = watches.get(wd, path)
            target = os.path.join(base, name) if name else base
            kind = next((k for k, bits in _IN.items() if event_mask & bits), "Unknown")
            if kind == "Create" and event_mask & _IN_ISDIR and args.get("recursive"):
                add(target)
            if kind in wanted or (kind.startswith("Rename") and "Rename" in wanted):
                _write_all(1, json.dumps({"event_type": kind, "paths": [target]}).encode() + b"\n")


_COMMANDS = {
    "ReadFile": read_file,
    "WriteFile": write_file,
    "ListFiles": list_files,
    "MakeDirectory": make_directory,
    "Remove": remove,
    "Stat": stat_path,
    "Watch": watch,
}


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
