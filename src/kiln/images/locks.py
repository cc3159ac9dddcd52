"""One builder per layer, across every kiln process sharing a KILN_HOME: a lock file per key.

`flock` locks vanish with their process, so a server killed mid-build blocks no one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

_POLL = 0.1  # seconds between attempts; waiting in a thread could outlive the event loop


class LayerLocks:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Wait until no other process builds `key`, then hold it until the block ends."""
        fd = os.open(self.root / f"{key}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_POLL)
            yield
        finally:
            os.close(fd)
