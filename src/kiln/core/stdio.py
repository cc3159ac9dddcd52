"""A process's stdio as the sandbox protocol sees it: output read by byte offset (any number of
readers, each resuming where it left off), stdin written by offset (a re-sent write is
applied once), and a pseudo-terminal's master side as both."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

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

    async def read(self, offset: int, until: float | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) chunks from `offset` as they are written, until the process closes it
        (or, given `until`, a `time.monotonic()` deadline, when nothing new came by then)."""
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
            if until is None:
                await self._changed.wait(None)
            elif not await self._changed.wait(max(0.0, until - time.monotonic())):
                return


class Writer(Protocol):
    """Where stdin goes: a pipe (`asyncio.StreamWriter`) or a `Terminal`."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class StdinPipe:
    """A process's stdin, written by offset: bytes below what was already written are skipped
    (the client re-sends after a lost acknowledgement), a gap is refused. Or written by token
    (`write_once`): a write whose token was applied already is a re-send, and skipped."""

    def __init__(self, writer: Writer | None) -> None:
        self._writer = writer
        self.written = 0
        self.closed = writer is None
        self._lock = asyncio.Lock()
        self._applied: collections.deque[str] = collections.deque(maxlen=64)

    async def write(self, offset: int, data: bytes, eof: bool) -> None:
        async with self._lock:
            await self._write(offset, data, eof)

    async def write_once(self, token: str, data: bytes, eof: bool) -> None:
        """Append `data` unless a write with this token was applied (the client's re-send of a
        write whose acknowledgement it lost carries the same token)."""
        async with self._lock:
            if token in self._applied:
                return
            await self._write(self.written, data, eof)
            self._applied.append(token)

    async def _write(self, offset: int, data: bytes, eof: bool) -> None:
        if offset > self.written:
            raise InvalidRequest(
                f"stdin write at offset {offset}, but only {self.written} bytes were written before"
            )
        data = data[self.written - offset :]
        if data:
            if self.closed or self._writer is None:
                raise StdinClosed("stdin is closed: the process ended or its stdin was closed (write_eof)")
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


class Terminal:
    """A pseudo-terminal's master side as the stdio of the process on it: what the terminal
    shows goes to `output`, and what is written here is typed into it (a `StdinPipe` writes
    here). `closed_after` closes it once its process has ended and the last output is read."""

    def __init__(self, fd: int, output: Callable[[bytes], None], rows: int = 0, cols: int = 0) -> None:
        self.fd = fd
        self._output = output
        self._loop = asyncio.get_running_loop()
        if rows and cols:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.set_blocking(fd, False)
        self._typed = bytearray()
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the terminal's last process has closed it
            data = b""
        if data:
            self._output(data)
        else:
            self._loop.remove_reader(self.fd)

    def write(self, data: bytes) -> None:
        self._typed += data

    async def drain(self) -> None:
        while self._typed:
            try:
                del self._typed[: os.write(self.fd, self._typed)]
            except BlockingIOError:  # the terminal's input queue is full until its process reads
                await asyncio.sleep(0.01)
            except OSError as exc:
                self._typed.clear()
                raise BrokenPipeError("the terminal is closed") from exc

    def close(self) -> None:
        """The end of stdin: a terminal stays open for the process on it."""

    async def closed_after(self, process_exit: Awaitable[object]) -> None:
        await process_exit
        await asyncio.sleep(0.05)  # the last output the terminal holds
        self._readable()
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
