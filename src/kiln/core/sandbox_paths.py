"""Which paths of a running sandbox `mount_image`, `unmount_image` and `snapshot_directory` take.

A pure check of the path as the client sent it: where it leads is decided later, inside the
sandbox (its own root and mount namespace), never on the host.
"""

from __future__ import annotations

from posixpath import normpath

from kiln.errors import InvalidRequest

_VERBS = {
    "mount": "mount_image(path, image)",
    "unmount": "unmount_image(path)",
    "snapshot": "snapshot_directory(path)",
}
_WHOLE = {
    "mount": "an image cannot replace the sandbox's root: mount it at a directory such as /mnt/image",
    "unmount": "the sandbox's root is not a mounted image: give the path passed to mount_image",
    "snapshot": "snapshot the whole filesystem with snapshot_filesystem(), or name a directory",
}


def sandbox_path(path: str, verb: str) -> str:
    """`path` normalised (repeated and trailing slashes, `.` removed), or InvalidRequest naming
    the fix: it must be absolute, not `/`, and hold no `..` (which would mean a different
    directory depending on the links on its way)."""
    call = _VERBS[verb]
    if "\0" in path:
        raise InvalidRequest(f"{call}: the path holds a NUL byte; give a plain absolute path")
    if not path.startswith("/"):
        raise InvalidRequest(f"{call}: the path {path!r} is relative; give an absolute path such as /{path}")
    if ".." in path.split("/"):
        raise InvalidRequest(
            f"{call}: the path {path!r} holds '..'; give the directory's own absolute path without '..'"
        )
    normal = normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/":
        raise InvalidRequest(f"{call}: the path is '/'; {_WHOLE[verb]}")
    return normal
