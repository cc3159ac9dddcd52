"""Light real implementations of kiln's seams, for tests.

- `FakeClock`: time that moves only when a test says so, with timers on it (a `CallLater`).
- `InMemoryRuntime`: a container runtime that runs nothing; the test decides how each container
  ends and what it writes.
- `RuntimeLauncher`: a pool launcher that starts one container per task on any runtime.
- `settle()`: let every ready asyncio task run until it blocks.

    clock = FakeClock()
    runtime = InMemoryRuntime()
    calls = Calls(call_later=clock.call_later, clock=clock)
    pool = Pool(function, calls, RuntimeLauncher(runtime), clock)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from kiln.containers.idmap import IdMap
from kiln.containers.runtime import ContainerHandle, Runtime
from kiln.containers.spec import ContainerSpec, ExitStatus, OutputSink

if TYPE_CHECKING:
    from kiln.core.pool import Task

__all__ = [
    "FakeClock",
    "InMemoryContainer",
    "InMemoryRuntime",
    "RuntimeLauncher",
    "Timer",
    "settle",
]

KILLED = ExitStatus(code=None, signal=int(signal.SIGKILL))


class Timer:
    """A callback due at a time on a `FakeClock`; `cancel()` keeps it from running."""

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A monotonic clock that stands still until `advance()` moves it.

    Call it for the time (`clock() -> float`, like `time.monotonic`); pass `clock.call_later` where
    kiln schedules callbacks (`Calls(call_later=...)`). Timers run inside `advance()`, soonest
    first (ties in the order they were set), each with the clock reading its due time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, Timer]] = []  # a heap: (when, sequence, timer)
        self._sequence = itertools.count()

    def __call__(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once the clock has moved `delay` seconds on from now."""
        timer = Timer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock forward, running the timers that fall due on the way (including ones
        those timers set)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = when
            timer.callback()
        self._now = target

    @property
    def pending(self) -> list[float]:
        """Seconds from now until each timer still to run, soonest first."""
        return [when - self._now for when, _, timer in sorted(self._timers) if not timer.cancelled]


class InMemoryContainer:
    """A container that runs nothing: it lives until the test calls `exit()` or someone kills it.

    `kill()` ends it at once with SIGKILL, whatever the grace period.
    """

    def __init__(self, spec: ContainerSpec, sink: OutputSink | None = None) -> None:
        self.spec = spec
        self.sink = sink
        self.stdin: asyncio.StreamWriter | None = None  # it reads nothing
        self.killed = False
        self._status: ExitStatus | None = None
        self._exited = asyncio.Event()

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        assert self._status is not None
        return self._status

    async def kill(self, grace: float = 0.0) -> ExitStatus:
        if self._status is None:
            self.killed = True
            self.exit(KILLED)
        return await self.wait()

    def exit(self, status: ExitStatus) -> None:
        """End the container the way `status` says (the first ending counts)."""
        if self._status is None:
            self._status = status
            self._exited.set()

    def write(self, fd: int, data: bytes) -> None:
        """Output from the container on `fd` (1: stdout, 2: stderr), delivered to its sink."""
        if self.sink is not None:
            self.sink(fd, data)


class InMemoryRuntime:
    """A `kiln.containers.Runtime` whose containers are `InMemoryContainer`s; `started` lists
    them in the order they were started."""

    def __init__(self) -> None:
        self.started: list[InMemoryContainer] = []
        self.ids: IdMap | None = None  # nothing runs, so no ids are mapped

    async def start(self, spec: ContainerSpec, sink: OutputSink | None = None) -> InMemoryContainer:
        container = InMemoryContainer(spec, sink)
        self.started.append(container)
        return container

    @property
    def running(self) -> list[InMemoryContainer]:
        """The containers that have not ended yet."""
        return [c for c in self.started if c.status is None]

    async def shutdown(self) -> None:
        await asyncio.gather(*(c.kill() for c in self.running))


class RuntimeLauncher:
    """A pool `Launcher` that starts `ContainerSpec(image=[], argv=[function tag])` per task on
    `runtime`; `started` lists the tasks it launched."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.started: list[Task] = []

    async def launch(self, task: Task) -> ContainerHandle:
        self.started.append(task)
        return await self.runtime.start(ContainerSpec(image=[], argv=[task.function.tag]))

    async def cleanup(self, task: Task) -> None:
        pass


async def settle(turns: int = 10) -> None:
    """Yield to the event loop `turns` times: tasks that are ready run until they block, without
    waiting for any time to pass."""
    for _ in range(turns):
        await asyncio.sleep(0)
