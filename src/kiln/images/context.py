"""Build contexts: the files a COPY may read, and which of them a given COPY reads.

A COPY layer's key covers only the context files its sources match, so changing one file
rebuilds the COPY that reads it (and what follows), not every COPY of the image.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path


@dataclass
class BuildContext:
    """Files a COPY may read: relative path → file on the host."""

    files: dict[str, Path] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # relative path → sha256 hex

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.digests):
            h.update(f"{path}\0{self.digests[path]}\n".encode())
        return h.hexdigest()

    def subset(self, sources: list[str]) -> BuildContext:
        """The files that COPY sources (paths or globs, relative to the context) match."""
        patterns = [posixpath.normpath(s.lstrip("/") or ".") for s in sources]
        chosen = [rel for rel in self.digests if any(_matches(rel, p) for p in patterns)]
        return BuildContext(
            {r: self.files[r] for r in chosen if r in self.files}, {r: self.digests[r] for r in chosen}
        )

    def materialize(self, dest: Path) -> None:
        """Lay the files out under `dest` (hard links where possible)."""
        for rel, source in self.files.items():
            target = dest / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                target.hardlink_to(source)
            except OSError:
                shutil.copy2(source, target)


def _matches(path: str, pattern: str) -> bool:
    """Whether `path` is, or is inside, what `pattern` names (`*` stays within one component)."""
    if pattern == ".":
        return True
    parts = path.split("/")
    wanted = pattern.split("/")
    if len(parts) < len(wanted):
        return False
    return all(fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=False))


def materialize_from_layers(layers: list[Path], sources: list[str], dest: Path) -> None:
    """Lay out `sources` (absolute paths or globs in an image) as the image shows them, i.e.
    merged over its `layers` (topmost first), under `dest` (hard links)."""
    bottom_up = list(reversed(layers))
    for source in sources:
        rel = posixpath.normpath(source.lstrip("/") or ".")
        parent, _, name = rel.rpartition("/")
        names = {name}
        if any(c in name for c in "*?["):
            names = {
                entry
                for layer in bottom_up
                if (layer / parent).is_dir()
                for entry in os.listdir(layer / parent)
                if fnmatchcase(entry, name)
            }
        for match in sorted(names):
            path = f"{parent}/{match}" if parent else match
            for layer in bottom_up:
                if os.path.lexists(layer / path):
                    _link_over(layer / path, dest / path)
    _drop_whiteouts(dest)


def _link_over(source: Path, target: Path) -> None:
    """`source` on top of whatever `target` holds: files replace, directories merge."""
    if _is_whiteout(source):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target) and not (source.is_dir() and target.is_dir()):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    subprocess.run(["cp", "-a", "--link", "-f", "-T", "--", str(source), str(target)], check=True)


def _is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _drop_whiteouts(root: Path) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if _is_whiteout(path):
                path.unlink()
