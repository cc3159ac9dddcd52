"""Container pools: one per function, started and stopped by the autoscaler's decisions.

The pool owns its containers' lifecycles: it hands them inputs, enforces timeouts, and when a
container exits while holding inputs it retries or fails them with a message naming how it
died. Every container is reaped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiln.containers import ContainerHandle
from kiln.core.autoscaler import Load, check_settings, containers_to_start, containers_to_stop, timed_out
from kiln.core.calls import Calls, Input
from kiln.core.functions import Autoscaling, FunctionDef
from kiln.core.placement import Placement, Placer
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
    container: ContainerHandle | None = None
    placement: Placement = field(default_factory=Placement)  # where it runs, with which GPUs
    enqueued_at: float = field(default_factory=time.time)  # wall clock, for listings
    started_at: float = 0.0  # wall clock: when its process started
    ready: bool = False  # it has asked for inputs: start-up (imports, @enter) is over
    launched_at: float | None = None  # pool clock: when its process started
    inflight: dict[str, float] = field(default_factory=dict)  # input id → when handed over (pool clock)
    cancelled_inputs: set[str] = field(default_factory=set)  # to announce at the next heartbeat
    cancel_announced: bool = False  # the container was told to cancel an input
    inputs_taken: int = 0
    output_tail: list[str] = field(default_factory=list)  # the container's last lines of output
    idle_since: float | None = None
    draining: bool = False
    failure: Result | None = None  # set when the container reported an init failure
    killed_for: Result | None = None  # why kiln killed it (a timeout), reported instead of how it died
    runner: asyncio.Future[None] | None = None  # owns the container: starts, waits, reports
    http_address: tuple[str, int] | None = None  # a server's port, forwarded to the host's loopback


class TaskEvents(Protocol):
    """Told when containers start and end (the journal keeps them for `modal container …`)."""

    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, how: str) -> None: ...


class Launcher(Protocol):
    """Starts a container for a placed task (the frontend knows how its client's containers boot)."""

    async def launch(self, task: Task) -> ContainerHandle: ...

    async def cleanup(self, task: Task) -> None: ...


class Pool:
    def __init__(
        self,
        function: FunctionDef,
        calls: Calls,
        launcher: Launcher,
        clock: Callable[[], float],
        capacity: int | None = None,
        index: dict[str, Pool] | None = None,
        placer: Placer | None = None,
        events: TaskEvents | None = None,
    ) -> None:
        self.function = function
        self.placer = placer or Placer(detect=list)
        self.events = events
        # task ID → its pool, shared by all pools: containers' requests find their task in O(1).
        self.index = index if index is not None else {}
        self.capacity = capacity
        self.calls = calls
        self.launcher = launcher
        self.clock = clock
        self.tasks: dict[str, Task] = {}
        self.stopped = False
        self.abandoned = False  # the server is going down: inputs held stay unfinished for the next one
        self.startup_failures = 0
        self.overrides: dict[str, Any] = {}  # runtime changes to the autoscaler settings
        self._kills: set[asyncio.Task[Any]] = set()

    @property
    def settings(self) -> Autoscaling:
        """The function's autoscaler settings with the runtime overrides applied."""
        return dataclasses.replace(self.function.autoscaling, **self.overrides)

    def override(self, changes: dict[str, Any]) -> Autoscaling:
        """Change autoscaler settings until the function is defined again (its next deploy)."""
        check_settings(dataclasses.replace(self.settings, **changes))
        self.overrides.update(changes)
        self.reconcile()
        return self.settings

    def load(self) -> Load:
        queued, _ = self.calls.load(self.function.function_id)
        serving = [t for t in self.tasks.values() if not t.draining]
        return Load(
            queued=queued,
            running=sum(len(t.inflight) for t in serving),
            containers=len(serving),
            stopping=len(self.tasks) - len(serving),
        )

    def reconcile(self) -> None:
        """Start or drain containers to match the autoscaler's decision."""
        if self.stopped:
            return
        settings, load, target = self.settings, self.load(), self.function.target_inputs
        for _ in range(containers_to_start(settings, target, load, self.capacity)):
            self._start()
        idle = {t.task_id: t.idle_since for t in self.tasks.values() if not t.draining and not self._busy(t)}
        for task_id in containers_to_stop(settings, target, load, idle, self.clock(), self.capacity):
            self.drain(self.tasks[task_id])

    def _busy(self, task: Task) -> bool:
        """Whether a container has work that keeps it from scaling down."""
        return bool(task.inflight)

    def tick(self) -> None:
        """Periodic upkeep: enforce timeouts, then reconcile."""
        now = self.clock()
        for task in list(self.tasks.values()):
            self._check_startup(task, now)
            self._check_timeouts(task, now)
        self.reconcile()

    # --- what containers ask for

    async def next_inputs(self, task: Task, max_items: int, linger: float, wait: float) -> list[Input] | None:
        """Inputs for a container asking for work (empty: ask again); None tells it to stop."""
        if not task.ready:
            task.ready = True
            task.idle_since = self.clock()  # idle from now on, not from when it began starting
            self.startup_failures = 0  # containers of this function can start
        if task.draining or (self.function.single_use and task.inputs_taken):
            return None
        items = await self.calls.take(
            self.function.function_id,
            task.task_id,
            max_items,
            wait,
            stop=lambda: task.draining,
            linger=linger,
        )
        if not items:
            return None if task.draining else []
        now = self.clock()
        for item in items:
            task.inflight[item.input_id] = now
        task.inputs_taken += len(items)
        task.idle_since = None
        if self.function.single_use:
            self.drain(task)  # it runs this one input and exits; a new container serves the queue
        return items

    def put_outputs(self, task: Task, outputs: Iterable[tuple[str, int, Result]]) -> None:
        """A container's (input id, retry count, result) outcomes."""
        for input_id, retry_count, result in outputs:
            task.inflight.pop(input_id, None)
            if self.calls.holds(input_id, task.task_id, retry_count):
                self.calls.settle(input_id, result, task.task_id)
        if not task.inflight:
            task.idle_since = self.clock()

    def take_cancellations(self, task: Task) -> list[str]:
        """Inputs the container should cancel (announced at its heartbeat)."""
        cancelled = sorted(task.cancelled_inputs & task.inflight.keys())
        task.cancelled_inputs.clear()
        if cancelled:
            task.cancel_announced = True
        return cancelled

    def terminate(self, task: Task, message: str) -> None:
        """Kill a container at once; inputs of other calls it held go back to the queue."""
        if task.killed_for is None:
            self._kill(task, Result(Status.TERMINATED, message))

    # --- containers

    def attach(self, task: Task) -> None:
        """Make a container's requests reach this pool (the pool's own, or one run for a build)."""
        self.tasks[task.task_id] = task
        self.index[task.task_id] = self

    def detach(self, task: Task) -> None:
        self.tasks.pop(task.task_id, None)
        self.index.pop(task.task_id, None)

    def _start(self) -> None:
        task = Task(new_id("ta"), self.function, idle_since=self.clock())
        self.attach(task)
        task.runner = asyncio.ensure_future(self._run(task))

    async def _run(self, task: Task) -> None:
        reason, launched = await self._run_container(task)
        if self.abandoned:
            return
        if task.killed_for is not None:
            reason = task.killed_for.message
        self._settle_inflight(task, reason)
        self._count_startup_failure(task, reason, launched)
        if not self.stopped:
            self.reconcile()

    async def _run_container(self, task: Task) -> tuple[str, bool]:
        """Run the container to its end; returns how it ended and whether it started at all."""
        tag = self.function.tag
        placed = False
        try:
            task.placement = self.placer.place(self.function.resources)
            placed = True
            task.container = await self.launcher.launch(task)
            task.launched_at = self.clock()
            task.started_at = time.time()
            if self.events is not None:
                self.events.task_started(task)
            status = await task.container.wait()
            if self.events is not None:
                self.events.task_finished(task, status.describe())
            return f"The container running {tag} exited unexpectedly ({status.describe()})", True
        except KilnError as exc:
            return f"Could not start a container for {tag}: {exc}", False
        except Exception as exc:  # a launch failure is reported to the inputs, never raised
            log.exception("could not start a container for %s", tag)
            return f"Could not start a container for {tag}: {exc!r} (a kiln bug; see the server log)", False
        finally:
            self.detach(task)
            if placed:
                self.placer.release(task.placement)
            await self.launcher.cleanup(task)

    def _settle_inflight(self, task: Task, reason: str) -> None:
        """The container is gone: what happens to the inputs it still held."""
        held = list(task.inflight)
        task.inflight.clear()
        if not held:
            return
        if self.stopped:
            result = Result(Status.TERMINATED, "The app was stopped while this input was running.")
            self.calls.fail_running(task.task_id, held, result)
        elif task.cancel_announced:
            # A container may end itself to cancel one input (sync functions with concurrent
            # inputs); the others were not at fault.
            self.calls.requeue(held, task.task_id)
        else:
            self.calls.fail_running(
                task.task_id, held, Result(Status.FAILURE, f"{reason} while running this input.")
            )

    def _count_startup_failure(self, task: Task, reason: str, launched: bool) -> None:
        if task.failure is not None:
            # Import or @enter failed: no container of this function can run its inputs.
            self.calls.fail_pending(self.function.function_id, task.failure)
            return
        if not self._failed_to_start(task, launched):
            return
        # Retry a few times, then give up on the queue (unless other containers serve it).
        self.startup_failures += 1
        serving = any(t.ready and not t.draining for t in self.tasks.values())
        if not launched or (self.startup_failures >= MAX_STARTUP_FAILURES and not serving):
            tail = "\n".join(f"  {line}" for line in task.output_tail[-10:])
            message = f"{reason} before it could run any input." + (
                f" Its last output:\n{tail}" if tail else ""
            )
            status = task.killed_for.status if task.killed_for is not None else Status.FAILURE
            self.calls.fail_pending(self.function.function_id, Result(status, message))
            self.startup_failures = 0

    def _failed_to_start(self, task: Task, launched: bool) -> bool:
        if not launched:
            return True
        if task.ready or self.stopped:
            return False
        return task.killed_for is not None or not task.draining  # not a scale-down before it was ready

    def _check_startup(self, task: Task, now: float) -> None:
        if task.ready or task.launched_at is None or task.killed_for is not None:
            return
        limit = self.function.startup_timeout
        if now - task.launched_at >= limit:
            message = (
                f"The container for {self.function.tag} did not finish starting (imports and @enter) "
                f"within its startup timeout of {limit:g} s; raise it with startup_timeout=..."
            )
            self._kill(task, Result(Status.TIMEOUT, message))

    def _check_timeouts(self, task: Task, now: float) -> None:
        if task.killed_for is not None:
            return
        expired = timed_out(task.inflight, self.function.timeout, now)
        if not expired:
            return
        limit = self.function.timeout
        message = (
            f"{self.function.tag} timed out: this input ran longer than the function's timeout of "
            f"{limit:g} s, so its container was stopped; raise it with timeout=..."
        )
        for input_id in expired:
            del task.inflight[input_id]
            self.calls.settle(input_id, Result(Status.TIMEOUT, message), task.task_id)
        self._kill(task, Result(Status.TIMEOUT, message))

    def _kill(self, task: Task, why: Result) -> None:
        """Kill a container now, for a reason that is not its inputs' fault: the inputs it still
        holds go back to the queue uncharged. `why` replaces "exited unexpectedly" in reports."""
        task.killed_for = why
        self.calls.requeue(list(task.inflight), task.task_id)
        task.inflight.clear()
        self.drain(task)
        if task.container is not None:
            kill = asyncio.ensure_future(task.container.kill())
            self._kills.add(kill)
            kill.add_done_callback(self._kills.discard)

    def drain(self, task: Task) -> None:
        """Ask a container to finish: its next request for inputs gets the kill switch."""
        task.draining = True
        self.calls.queues[self.function.function_id].changed.notify()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop every container: idle ones get the kill switch (so @exit runs) and up to `grace`
        seconds to exit; the rest, and any still running after that, are killed."""
        self.stopped = True
        for task in self.tasks.values():
            self.drain(task)
        idle = [t.runner for t in self.tasks.values() if t.runner is not None and t.ready and not t.inflight]
        if idle:
            await asyncio.wait(idle, timeout=grace)
        containers = [t.container for t in self.tasks.values() if t.container is not None]
        await asyncio.gather(*(c.kill(grace) for c in containers), return_exceptions=True)


class Scheduler:
    """Keeps every function's pool reconciled: on each new input and on a periodic tick."""

    def __init__(
        self,
        calls: Calls,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
        capacity: int | None = None,
        placer: Placer | None = None,
        events: TaskEvents | None = None,
    ) -> None:
        self.calls = calls
        self.events = events
        self.capacity = capacity
        self.placer = placer or Placer(detect=list)
        # Each frontend's launcher, by name: a function's containers boot its frontend's way.
        self.launchers: dict[str, Launcher] = {}
        self.clock = clock
        self.tick = tick
        self.pools: dict[str, Pool] = {}
        self._pool_of_task: dict[str, Pool] = {}
        self._loop_task: asyncio.Task[None] | None = None
        calls.on_enqueue.append(self.poke)

    def register(self, function: FunctionDef) -> Pool:
        pool = self.pools.get(function.function_id)
        if pool is None:
            launcher = self.launchers[function.frontend]
            from kiln.core.servers import ServerPool  # a Pool subclass: imported late, no cycle

            kind = ServerPool if function.http_port else Pool
            pool = kind(
                function,
                self.calls,
                launcher,
                self.clock,
                self.capacity,
                self._pool_of_task,
                self.placer,
                self.events,
            )
            self.pools[function.function_id] = pool
        else:
            if function.definition != pool.function.definition:
                # A new deploy (or a rollback): runtime overrides reset (a re-bind keeps them), and
                # containers running the old code finish their inputs and make way for new ones.
                pool.overrides.clear()
                for task in list(pool.tasks.values()):
                    pool.drain(task)
            pool.function = function
        return pool

    def poke(self, function_id: str) -> None:
        pool = self.pools.get(function_id)
        if pool is not None:
            pool.reconcile()

    def find(self, task_id: str) -> tuple[Pool, Task] | None:
        pool = self._pool_of_task.get(task_id)
        task = pool.tasks.get(task_id) if pool is not None else None
        return (pool, task) if pool is not None and task is not None else None

    def task(self, task_id: str) -> Task | None:
        found = self.find(task_id)
        return found[1] if found else None

    def tasks(self) -> list[Task]:
        """Every container of every pool."""
        return [task for pool in self.pools.values() for task in pool.tasks.values()]

    def cancel_running(self, inputs: Iterable[Input], terminate: bool = False) -> None:
        """Stop inputs of a cancelled call that containers are running: announced at their next
        heartbeat, or (`terminate`) by killing their containers."""
        for item in inputs:
            found = self.find(item.task_id)
            if found is None:
                continue
            pool, task = found
            if terminate:
                pool.terminate(task, "The call was cancelled and its container terminated.")
            else:
                task.cancelled_inputs.add(item.input_id)

    def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for pool in list(self.pools.values()):
                try:
                    pool.tick()
                except Exception:
                    log.exception("upkeep of %s failed", pool.function.tag)

    async def stop_app(self, app_id: str, grace: float = 5.0) -> None:
        pools = [p for p in self.pools.values() if p.function.app_id == app_id]
        await asyncio.gather(*(p.stop(grace) for p in pools))
        for pool in pools:
            self.pools.pop(pool.function.function_id, None)

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for pool in self.pools.values():
            pool.abandoned = True
        await asyncio.gather(*(p.stop(grace=1.0) for p in self.pools.values()), return_exceptions=True)
