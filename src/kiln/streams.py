"""Long-poll primitives shared by the core and the image builder: a wake-up signal and an
append-only log buffer read with a cursor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

STDOUT, STDERR, INFO = 1, 2, 3


class Changed:
    """Many waiters, woken together whenever something changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next notify(); False on timeout."""
        # Not asyncio.wait_for: before Python 3.12 it drops a cancellation that comes as the
        # event is set, and a cancelled long poll would go on as if nothing happened.
        woken = asyncio.ensure_future(self._event.wait())
        try:
            done, _ = await asyncio.wait({woken}, timeout=timeout)
        finally:
            woken.cancel()
        return bool(done)


@dataclass(frozen=True)
class LogEntry:
    entry_id: int
    data: str
    fd: int
    timestamp: float
    task_id: str = ""
    function_id: str = ""
    image_id: str = ""


class LogBuffer:
    """Entries numbered from 1; `read(after)` waits until there is something newer or it closes."""

    def __init__(
        self,
        max_entries: int = 100_000,
        earlier: list[LogEntry] | None = None,
        keep: Callable[[LogEntry], None] | None = None,
    ) -> None:
        """`earlier`: entries kept from before a restart (their IDs continue); `keep`: called with
        every new entry (the app's log file)."""
        self._entries: list[LogEntry] = list(earlier or [])
        self._first_id = self._entries[0].entry_id if self._entries else 1
        self._max = max_entries
        self._changed = Changed()
        self._keep = keep
        self.closed = False

    def append(self, data: str, fd: int = STDOUT, **source: str) -> None:
        if not data:
            return
        entry_id = self._first_id + len(self._entries)
        entry = LogEntry(entry_id, data, fd, time.time(), **source)
        self._entries.append(entry)
        if self._keep is not None:
            self._keep(entry)
        if len(self._entries) > self._max:
            drop = len(self._entries) - self._max
            del self._entries[:drop]
            self._first_id += drop
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.notify()

    @property
    def last_id(self) -> int:
        """The newest entry's ID (0 before the first): a cursor that reads only what comes next."""
        return self._first_id + len(self._entries) - 1

    def after(self, cursor: int) -> list[LogEntry]:
        start = max(0, cursor + 1 - self._first_id)
        return self._entries[start:]

    async def read(self, cursor: int, timeout: float) -> list[LogEntry]:
        """Entries after `cursor`; waits up to `timeout` seconds for some unless closed."""
        entries = self.after(cursor)
        if entries or self.closed:
            return entries
        await self._changed.wait(timeout)
        return self.after(cursor)
