"""Applying OCI/Docker layer tarballs to a directory, in order, as a container engine does.

A layer deletes what lower layers had with whiteouts (`.wh.<name>`, and `.wh..wh..opq` for
"everything in this directory"); deletions apply before the layer's own files. Entries that
would land outside the directory, or be written through a symlink, are refused: a layer must
not be able to touch the host.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from kiln.errors import ImageBuildError

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


def apply_layer(archive: Path, dest: Path) -> None:
    """Apply one layer (a tar, optionally gzip-compressed) on top of what `dest` holds."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:  # deletions first: they only affect lower layers
                name = _clean(member.name)
                base = PurePosixPath(name).name
                if base == _OPAQUE:
                    _empty_dir(_inside(dest, str(PurePosixPath(name).parent)))
                elif base.startswith(_WHITEOUT):
                    _remove(_inside(dest, str(PurePosixPath(name).parent / base[len(_WHITEOUT) :])))
            for member in members:
                name = _clean(member.name)
                if PurePosixPath(name).name.startswith(_WHITEOUT) or name in ("", "."):
                    continue
                target = _inside(dest, name)
                if member.isdir() and target.is_dir() and not target.is_symlink():
                    continue  # keep the directory (and what lower layers put in it)
                if target.exists() or target.is_symlink():
                    _remove(target)
                if member.islnk():
                    _inside(dest, _clean(member.linkname))  # a hard link must point inside too
                member.name = name
                tar.extract(member, dest, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageBuildError(f"could not unpack image layer {archive.name}: {exc}") from exc


def _clean(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if ".." in parts:
        raise ImageBuildError(f"image layer entry {name!r} points outside the image; refusing it")
    return "/".join(parts)


def _inside(dest: Path, rel: str) -> Path:
    """`dest/rel`, refusing a path whose directories include a symlink (it could lead anywhere)."""
    current = dest
    for part in [p for p in rel.split("/") if p][:-1]:
        current = current / part
        if current.is_symlink():
            raise ImageBuildError(
                f"image layer entry {rel!r} is written through the symlink /{current.relative_to(dest)}; "
                "kiln refuses such layers"
            )
    return dest / rel if rel else dest


def _remove(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _empty_dir(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for entry in list(path.iterdir()):
            _remove(entry)
