"""The pool's loops with in-memory containers and a fake clock: timeouts, deaths, scaling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from kiln.containers import ExitStatus
from kiln.core.calls import Calls, FunctionCall, Input, Invocation
from kiln.core.functions import Autoscaling, FunctionDef, RetryPolicy
from kiln.core.pool import MAX_STARTUP_FAILURES, Pool, Task
from kiln.core.results import Result, Status
from kiln.testing import FakeClock, InMemoryContainer, InMemoryRuntime, RuntimeLauncher, settle

FN = "fu-pool"
OK = Result(Status.SUCCESS, payload=b"ok")


class Harness:
    def __init__(self, **function: Any) -> None:
        self.clock = FakeClock()  # drives retry backoffs, deadlines and the pool's timeouts
        self.calls = Calls(call_later=self.clock.call_later, clock=self.clock)
        self.runtime = InMemoryRuntime()
        self.launcher = RuntimeLauncher(self.runtime)
        self.function = FunctionDef(FN, "ap-x", "f", **function)
        self.pool = Pool(self.function, self.calls, self.launcher, self.clock)
        self.calls.on_enqueue.append(lambda _: self.pool.reconcile())

    def call(self, n: int) -> tuple[FunctionCall, list[Input]]:
        call = self.calls.create(FN, "ap-x", Invocation.SYNC, is_map=True, retry=self.function.retry)
        return call, self.calls.put_inputs(call, [(i, b"", "", False) for i in range(n)])

    def tasks(self) -> list[Task]:
        return list(self.pool.tasks.values())

    def container(self, task: Task) -> InMemoryContainer:
        assert isinstance(task.container, InMemoryContainer)
        return task.container

    async def ready(self, task: Task, n: int = 1) -> list[Input]:
        """The container asks for inputs and takes what is queued now (fake time never passes
        while it waits, so it does not)."""
        items = await self.pool.next_inputs(task, n, 0.0, 0.0)
        assert items is not None
        return items

    def advance(self, seconds: float) -> None:
        """Time passes (retry backoffs run out), then the scheduler's periodic tick."""
        self.clock.advance(seconds)
        self.pool.tick()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_a_timed_out_input_fails_with_timeout_and_its_container_is_replaced() -> None:
    async def main() -> None:
        h = Harness(timeout=10.0)
        call, _ = h.call(1)
        await settle()
        (task,) = h.tasks()
        await h.ready(task)
        container = h.container(task)
        h.advance(9.9)
        await settle()
        assert not container.killed
        h.advance(0.1)
        await settle()
        assert container.killed
        (output,) = call.outputs
        assert output.result.status == Status.TIMEOUT and "timeout of 10 s" in output.result.message
        assert h.tasks() == []  # nothing queued: no replacement needed

    run(main)


def test_a_timeout_requeues_the_containers_other_inputs_uncharged() -> None:
    async def main() -> None:
        h = Harness(timeout=10.0, max_inputs=2, target_inputs=2)
        call, (slow, other) = h.call(2)
        await settle()
        (task,) = h.tasks()
        await h.ready(task)
        h.clock.advance(5)
        await h.ready(task)
        h.advance(5)
        assert [o.input_id for o in call.outputs] == [slow.input_id]
        assert h.calls.load(FN)[0] == 1 and other.retry_count == 0
        await settle()
        (replacement,) = h.tasks()
        assert replacement is not task
        assert [i.input_id for i in await h.ready(replacement)] == [other.input_id]

    run(main)


def test_a_timeout_is_retried_per_the_policy() -> None:
    async def main() -> None:
        h = Harness(timeout=10.0, retry=RetryPolicy(retries=1))
        call, (item,) = h.call(1)
        await settle()
        (task,) = h.tasks()
        await h.ready(task)
        h.advance(10)
        assert call.outputs == [] and h.clock.pending == [1.0]  # the retry waits out its backoff
        await settle()
        h.advance(1.0)
        await settle()
        (task,) = h.tasks()
        assert [i.retry_count for i in await h.ready(task)] == [1]
        h.pool.put_outputs(task, [(item.input_id, 1, OK)])
        assert [o.result for o in call.outputs] == [OK]

    run(main)


def test_a_container_death_mid_input_is_retried_then_reported() -> None:
    async def main() -> None:
        h = Harness(retry=RetryPolicy(retries=1))
        call, _ = h.call(1)
        for _ in range(2):
            await settle()
            (task,) = h.tasks()
            await h.ready(task)
            h.container(task).exit(ExitStatus(code=None, signal=9))
            await settle()
            h.advance(1.0)
        (output,) = call.outputs
        assert output.result.status == Status.FAILURE
        assert "(killed by SIGKILL) while running this input" in output.result.message

    run(main)


def test_startup_timeout_kills_and_replaces_then_fails_the_queue() -> None:
    async def main() -> None:
        h = Harness(startup_timeout=30.0)
        call, _ = h.call(1)
        for _ in range(MAX_STARTUP_FAILURES):
            await settle()
            (task,) = h.tasks()
            container = h.container(task)
            h.advance(29)
            await settle()
            assert not container.killed
            h.advance(1)
            await settle()
            assert container.killed
        (output,) = call.outputs
        assert output.result.status == Status.TIMEOUT and "startup timeout of 30 s" in output.result.message
        assert h.calls.load(FN) == (0, 0)

    run(main)


def test_startup_deaths_do_not_fail_the_queue_while_other_containers_serve_it() -> None:
    async def main() -> None:
        h = Harness(autoscaling=Autoscaling(max_containers=2))
        call, _ = h.call(5)
        await settle()
        healthy, _ = h.tasks()
        await h.ready(healthy)
        for _ in range(MAX_STARTUP_FAILURES + 1):
            starting = next(t for t in h.tasks() if t is not healthy)
            h.container(starting).exit(ExitStatus(code=None, signal=9))  # killed before it was ready
            await settle()
        assert call.outputs == []

    run(main)


def test_max_containers_counts_containers_still_stopping() -> None:
    async def main() -> None:
        h = Harness(single_use=True, autoscaling=Autoscaling(max_containers=2))
        h.call(5)
        await settle()
        first, _ = h.tasks()
        await h.ready(first)  # single-use: it drains once it has its input
        assert first.draining
        h.pool.reconcile()
        assert len(h.tasks()) == 2, "a third container while the first is still running"
        assert await h.pool.next_inputs(first, 1, 0.0, 0.0) is None  # the kill switch
        h.container(first).exit(ExitStatus(code=0, signal=None))
        await settle()
        assert len(h.tasks()) == 2 and first not in h.tasks()

    run(main)


def test_idle_containers_drain_after_the_scaledown_window() -> None:
    async def main() -> None:
        h = Harness(autoscaling=Autoscaling(scaledown_window=60))
        _call, (item,) = h.call(1)
        await settle()
        (task,) = h.tasks()
        await h.ready(task)
        h.pool.put_outputs(task, [(item.input_id, 0, OK)])
        h.advance(59)
        assert not task.draining
        h.advance(1)
        assert task.draining
        assert await h.pool.next_inputs(task, 1, 0.0, 0.0) is None

    run(main)


def test_overrides_change_the_settings_until_redefined() -> None:
    async def main() -> None:
        h = Harness()
        settings = h.pool.override({"min_containers": 2, "max_containers": None})
        assert settings.min_containers == 2
        await settle()
        assert len(h.tasks()) == 2
        assert h.pool.settings.scaledown_window == 60

    run(main)


def test_outputs_for_inputs_the_container_no_longer_holds_are_ignored() -> None:
    async def main() -> None:
        h = Harness(retry=RetryPolicy(retries=1))
        call, (item,) = h.call(1)
        await settle()
        (task,) = h.tasks()
        await h.ready(task)
        h.pool.put_outputs(task, [(item.input_id, 0, Result(Status.FAILURE, "boom", b"exc"))])
        h.pool.put_outputs(task, [(item.input_id, 0, OK)])  # a late duplicate of the failed attempt
        assert call.outputs == []
        h.advance(1.0)
        await h.ready(task)
        h.pool.put_outputs(task, [(item.input_id, 1, OK)])
        assert [o.result for o in call.outputs] == [OK]

    run(main)


def test_stop_lets_idle_containers_exit_through_the_kill_switch_and_kills_busy_ones() -> None:
    async def main() -> None:
        h = Harness()
        h.pool.override({"min_containers": 2})
        call, _ = h.call(1)
        await settle()
        busy, idle = h.tasks()
        await h.ready(busy)
        assert await h.ready(idle) == []
        stopping = asyncio.ensure_future(h.pool.stop(grace=5.0))
        await settle()
        assert not h.container(busy).killed, "busy containers wait while idle ones exit"
        assert await h.pool.next_inputs(idle, 1, 0.0, 0.0) is None  # the kill switch: @exit runs
        h.container(idle).exit(ExitStatus(code=0, signal=None))
        await asyncio.wait_for(stopping, 1)
        assert h.container(busy).killed and not h.container(idle).killed
        assert [o.result.status for o in call.outputs] == [Status.TERMINATED]

    run(main)
