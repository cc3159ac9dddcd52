"""A process's stdio as the sandbox protocol sees it: output read by byte offset (any number of
readers, each resuming where it left off), and stdin written by offset (a re-sent write is
applied once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kiln.errors import InvalidRequest
from kiln.streams import Changed

_CHUNK = 1 << 20  # at most this much per message read


class OutputLog:
    """Bytes a process wrote, addressed by offset from its first byte.

    Without `backpressure`, only the last `max_bytes` are kept: a reader that asks for older
    bytes gets the oldest kept, and their offset (a sandbox's entrypoint, whose protocol says
    so). With it, nothing unread is dropped: the writer waits (`room()`) while more than
    `max_bytes` lie beyond what a reader has asked for (an exec, whose reader cannot be told
    of a gap: a large file read through the filesystem API streams at the reader's pace).
    """

    def __init__(self, max_bytes: int = 64 << 20, backpressure: bool = False) -> None:
        self._data = bytearray()
        self._start = 0  # offset of _data[0]
        self._max = max_bytes
        self._backpressure = backpressure
        self._asked = 0  # the furthest offset a reader asked for (it has every byte before)
        self._changed = Changed()
        self.closed = False

    async def room(self) -> None:
        """Wait until the unread bytes are under the limit (only with backpressure)."""
        while self._backpressure and not self.closed and self.end - self._asked > self._max:
            await self._changed.wait(None)

    @property
    def end(self) -> int:
        return self._start + len(self._data)

    def append(self, data: bytes) -> None:
        if not data or self.closed:
            return
        self._data += data
        if not self._backpressure and len(self._data) > self._max:
            self._drop(len(self._data) - self._max)
        self._changed.notify()

    def _drop(self, count: int) -> None:
        del self._data[:count]
        self._start += count

    def close(self) -> None:
        self.closed = True
        self._changed.notify()

    async def read(self, offset: int) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) chunks from `offset` as they are written, until the process closes it."""
        while True:
            offset = max(offset, self._start)
            if self._backpressure and offset > self._asked:
                self._asked = offset
                # Keep a margin below it: a reader whose stream broke asks again from what it got.
                if offset - self._start > _CHUNK * 8:
                    self._drop(offset - self._start - _CHUNK * 4)
                self._changed.notify()
            if offset < self.end:
                begin = offset - self._start
                chunk = bytes(self._data[begin : begin + _CHUNK])
                yield offset, chunk
                offset += len(chunk)
                continue
            if self.closed:
                return
            await self._changed.wait(None)


class StdinPipe:
    """A process's stdin, written by offset: bytes below what was already written are skipped
    (the client re-sends after a lost acknowledgement), a gap is refused."""

    def __init__(self, writer: asyncio.StreamWriter | None) -> None:
        self._writer = writer
        self.written = 0
        self.closed = writer is None
        self._lock = asyncio.Lock()

    async def write(self, offset: int, data: bytes, eof: bool) -> None:
        async with self._lock:
            if offset > self.written:
                raise InvalidRequest(
                    f"stdin write at offset {offset}, but only {self.written} bytes were written before"
                )
            data = data[self.written - offset :]
            if data:
                if self.closed or self._writer is None:
                    raise StdinClosed(
                        "stdin is closed: the process ended or its stdin was closed (write_eof)"
                    )
                self._writer.write(data)
                self.written += len(data)
                try:
                    await self._writer.drain()
                except (ConnectionError, BrokenPipeError) as exc:
                    self.closed = True
                    raise StdinClosed("the process closed its stdin") from exc
            if eof:
                self.close()

    def close(self) -> None:
        if self._writer is not None and not self.closed:
            with contextlib.suppress(Exception):
                self._writer.close()
        self.closed = True


class StdinClosed(InvalidRequest):
    """A write to a stdin that is closed."""
