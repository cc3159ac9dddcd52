"""The ids a container's root maps to on the host, and files shifted into that range.

Root inside every container is host uid/gid 100000 (65536 ids from there): whatever a container
writes is owned by those unprivileged ids. Files the host makes for a container (a base image
filled on the host, a registry layer, a scratch directory) are shifted into the range, so that
root inside owns them; a file owned by an unmapped id would show as `nobody` and stay read-only
even to root inside.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IdMap:
    """Container ids 0..count-1 are host ids uid..uid+count-1 (and the same for groups)."""

    uid: int = 100000
    gid: int = 100000
    count: int = 65536

    def own(self, *paths: Path) -> None:
        """Make `paths` belong to the container's root (host uid/gid of root inside)."""
        for path in paths:
            os.lchown(path, self.uid, self.gid)

    def shift_tree(self, root: Path, skip_linked: bool = False) -> None:
        """Shift every entry under `root` (included) from host ids into the container's range.

        Ids already in the range are kept; `chown` clears setuid/setgid bits, so modes are put
        back. A hard link shares its owner with every other name of the file: with
        `skip_linked`, files linked elsewhere (the host's own, in a snapshot) keep theirs.
        """
        self._shift(root, skip_linked)
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                self._shift(Path(directory) / name, skip_linked)

    def _shift(self, path: Path, skip_linked: bool = False) -> None:
        st = os.lstat(path)
        if skip_linked and st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            return
        uid = (
            st.st_uid if self.uid <= st.st_uid < self.uid + self.count else self.uid + st.st_uid % self.count
        )
        gid = (
            st.st_gid if self.gid <= st.st_gid < self.gid + self.count else self.gid + st.st_gid % self.count
        )
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
