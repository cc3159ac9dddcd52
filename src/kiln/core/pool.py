"""Container pools: one per function, started and stopped by the autoscaler's decisions.

The pool owns its containers' lifecycles: a container that exits while holding inputs fails
them with a message naming how it died, and every container is reaped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kiln.containers import Container
from kiln.core.autoscaler import Load, desired_containers, should_scale_down
from kiln.core.calls import Calls
from kiln.core.functions import FunctionDef
from kiln.core.results import Result, Status
from kiln.errors import KilnError
from kiln.ids import new_id

log = logging.getLogger("kiln.pool")

# Containers that die before their first input are restarted this many times, then the
# function's queued inputs fail with the reason (instead of a crash loop).
MAX_STARTUP_FAILURES = 3


@dataclass
class Task:
    """One container serving one function."""

    task_id: str
    function: FunctionDef
    container: Container | None = None
    started: bool = False  # the container has said hello
    inflight: set[str] = field(default_factory=set)
    cancelled_inputs: set[str] = field(default_factory=set)  # to announce at the next heartbeat
    inputs_taken: int = 0
    output_tail: list[str] = field(default_factory=list)  # the container's last lines of output
    idle_since: float | None = None
    draining: bool = False
    failure: Result | None = None  # set when the container reported an init failure
    enqueued_at: float = field(default_factory=time.time)
    runner: asyncio.Future[None] | None = None  # owns the container: starts, waits, reports


class Launcher(Protocol):
    """Starts a container for a task (the frontend knows how its client's containers boot)."""

    async def launch(self, task: Task) -> Container: ...

    async def cleanup(self, task: Task) -> None: ...


class Pool:
    def __init__(
        self,
        function: FunctionDef,
        calls: Calls,
        launcher: Launcher,
        clock: Callable[[], float],
        capacity: int | None = None,
    ) -> None:
        self.function = function
        self.capacity = capacity
        self.calls = calls
        self.launcher = launcher
        self.clock = clock
        self.tasks: dict[str, Task] = {}
        self.stopped = False
        self.startup_failures = 0

    def load(self) -> Load:
        queued, running = self.calls.load(self.function.function_id)
        alive = sum(1 for t in self.tasks.values() if not t.draining)
        return Load(queued=queued, running=running, containers=alive)

    def reconcile(self) -> None:
        """Start or drain containers to match the autoscaler's decision."""
        if self.stopped:
            return
        function = self.function
        load = self.load()
        wanted = desired_containers(function.autoscaling, function.target_inputs, load, self.capacity)
        for _ in range(wanted - load.containers):
            self._start()
        now = self.clock()
        surplus = load.containers - wanted
        for task in list(self.tasks.values()):
            if surplus <= 0:
                break
            if (
                not task.draining
                and not task.inflight
                and should_scale_down(function.autoscaling, task.idle_since, now)
            ):
                self.drain(task)
                surplus -= 1

    def _start(self) -> None:
        task = Task(new_id("ta"), self.function, idle_since=self.clock())
        self.tasks[task.task_id] = task
        task.runner = asyncio.ensure_future(self._run(task))

    async def _run(self, task: Task) -> None:
        status = None
        try:
            task.container = await self.launcher.launch(task)
            status = await task.container.wait()
            reason = f"The container running {self.function.tag} exited unexpectedly ({status.describe()})"
        except KilnError as exc:
            reason = f"Could not start a container for {self.function.tag}: {exc}"
        except Exception as exc:  # a launch failure is reported to the inputs, never raised
            log.exception("could not start a container for %s", self.function.tag)
            reason = f"Could not start a container for {self.function.tag}: {exc!r} (a kiln bug; see the server log)"
        finally:
            self.tasks.pop(task.task_id, None)
            await self.launcher.cleanup(task)
        if task.inflight:
            message = f"{reason} while running this input."
            self.calls.fail_running(task.task_id, list(task.inflight), Result(Status.FAILURE, message))
        if task.failure is not None:
            # Import or @enter failed: no container of this function can run its inputs.
            self.calls.fail_pending(self.function.function_id, task.failure)
        elif status is None or (not task.inputs_taken and not task.draining and not self.stopped):
            # It died before taking any input: retry a few times, then give up on the queue.
            self.startup_failures += 1
            if status is None or self.startup_failures >= MAX_STARTUP_FAILURES:
                tail = "\n".join(f"  {line}" for line in task.output_tail[-10:])
                message = f"{reason} before it could run any input." + (
                    f" Its last output:\n{tail}" if tail else ""
                )
                self.calls.fail_pending(self.function.function_id, Result(Status.FAILURE, message))
                self.startup_failures = 0
        else:
            self.startup_failures = 0
        if not self.stopped:
            self.reconcile()

    def drain(self, task: Task) -> None:
        """Ask a container to finish: its next request for inputs gets the kill switch."""
        task.draining = True
        self.calls.queues[self.function.function_id].changed.notify()

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped = True
        for task in self.tasks.values():
            self.drain(task)
        containers = [t.container for t in self.tasks.values() if t.container is not None]
        await asyncio.gather(*(c.kill(grace) for c in containers), return_exceptions=True)


class Scheduler:
    """Keeps every function's pool reconciled: on each new input and on a periodic tick."""

    def __init__(
        self,
        calls: Calls,
        launcher: Launcher,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
        capacity: int | None = None,
    ) -> None:
        self.calls = calls
        self.capacity = capacity
        self.launcher = launcher
        self.clock = clock
        self.tick = tick
        self.pools: dict[str, Pool] = {}
        self._loop_task: asyncio.Task[None] | None = None
        calls.on_enqueue.append(self.poke)

    def register(self, function: FunctionDef) -> Pool:
        pool = self.pools.get(function.function_id)
        if pool is None:
            pool = Pool(function, self.calls, self.launcher, self.clock, self.capacity)
            self.pools[function.function_id] = pool
        else:
            pool.function = function
        return pool

    def poke(self, function_id: str) -> None:
        pool = self.pools.get(function_id)
        if pool is not None:
            pool.reconcile()

    def task(self, task_id: str) -> Task | None:
        for pool in self.pools.values():
            task = pool.tasks.get(task_id)
            if task is not None:
                return task
        return None

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for pool in list(self.pools.values()):
                try:
                    pool.reconcile()
                except Exception:
                    log.exception("reconciling %s failed", pool.function.tag)

    async def stop_app(self, app_id: str, grace: float = 5.0) -> None:
        pools = [p for p in self.pools.values() if p.function.app_id == app_id]
        await asyncio.gather(*(p.stop(grace) for p in pools))
        for pool in pools:
            self.pools.pop(pool.function.function_id, None)

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        await asyncio.gather(*(p.stop(grace=1.0) for p in self.pools.values()), return_exceptions=True)
