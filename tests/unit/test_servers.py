"""Server pools (`@app.server`): routing decisions, and requests as the autoscaler's load, with
in-memory containers and a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from kiln.containers import ExitStatus
from kiln.core.calls import Calls
from kiln.core.functions import Autoscaling, FunctionDef
from kiln.core.pool import MAX_STARTUP_FAILURES, Task
from kiln.core.servers import ServerPool, choose
from kiln.errors import LimitExceeded, ServerUnavailable
from kiln.testing import FakeClock, InMemoryContainer, InMemoryRuntime, RuntimeLauncher, settle


def ready_task(task_id: str, busy: int = 0, ready: bool = True, draining: bool = False) -> Task:
    task = Task(task_id, FunctionDef("fu-s", "ap-x", "S", http_port=8000), ready=ready, draining=draining)
    task.inflight = {f"rq-{n}": 0.0 for n in range(busy)}
    return task


def test_a_request_goes_to_the_least_busy_ready_container() -> None:
    tasks = [ready_task("ta-a", busy=2), ready_task("ta-b", busy=1), ready_task("ta-c", ready=False)]
    assert choose(tasks, max_requests=0) is tasks[1]
    assert choose([ready_task("ta-d", draining=True)], max_requests=0) is None


def test_max_concurrency_leaves_a_full_container_out() -> None:
    tasks = [ready_task("ta-a", busy=1), ready_task("ta-b", busy=1)]
    assert choose(tasks, max_requests=1) is None
    assert choose(tasks, max_requests=2) is not None


def test_a_session_keeps_its_container_and_sessions_spread() -> None:
    tasks = [ready_task(f"ta-{n}") for n in range(4)]
    picked = {session: choose(tasks, 0, session) for session in (f"s{n}" for n in range(40))}
    assert len({t.task_id for t in picked.values() if t}) > 1
    # Rendezvous hashing: removing one container moves only the sessions it had.
    gone = tasks.pop(0)
    for session, task in picked.items():
        if task is not gone:
            assert choose(tasks, 0, session) is task


class Harness:
    def __init__(self, **function: object) -> None:
        self.clock = FakeClock()
        self.calls = Calls(call_later=self.clock.call_later, clock=self.clock)
        self.runtime = InMemoryRuntime()
        self.launcher = RuntimeLauncher(self.runtime)
        self.function = FunctionDef("fu-s", "ap-x", "Server", http_port=8000, **function)  # type: ignore[arg-type]
        self.pool = ServerPool(self.function, self.calls, self.launcher, self.clock)

    def tasks(self) -> list[Task]:
        return list(self.pool.tasks.values())


def test_a_request_starts_a_container_and_waits_until_its_server_is_ready() -> None:
    async def main() -> None:
        h = Harness()
        request = h.pool.request(wait=60)
        entered = asyncio.ensure_future(request.__aenter__())
        await settle()
        assert len(h.tasks()) == 1 and not entered.done()  # started on demand, not ready yet
        h.pool.server_ready(h.tasks()[0])
        await settle()
        task = entered.result()
        assert task is h.tasks()[0] and len(task.inflight) == 1
        await request.__aexit__(None, None, None)
        assert not task.inflight and task.idle_since == h.clock()

    asyncio.run(main())


def test_a_full_server_answers_limit_exceeded_and_an_idle_one_scales_down() -> None:
    async def main() -> None:
        h = Harness(max_inputs=1, autoscaling=Autoscaling(max_containers=1, scaledown_window=30))
        first = h.pool.request(wait=60)
        entered = asyncio.ensure_future(first.__aenter__())
        await settle()
        h.pool.server_ready(h.tasks()[0])
        await settle()
        assert entered.done()
        with pytest.raises(LimitExceeded, match="max_concurrency=1"):
            async with h.pool.request(wait=0):
                pass
        await first.__aexit__(None, None, None)
        container = h.tasks()[0].container
        assert isinstance(container, InMemoryContainer)
        h.clock.advance(29)
        h.pool.tick()
        await settle()
        assert container.status is None
        h.clock.advance(2)  # idle for the whole scale-down window: stopped
        h.pool.tick()
        await settle()
        assert container.status is not None and not h.tasks()

    asyncio.run(main())


def test_a_draining_container_finishes_its_request_before_it_is_stopped() -> None:
    async def main() -> None:
        h = Harness(autoscaling=Autoscaling(min_containers=1))
        h.pool.reconcile()
        await settle()
        task = h.tasks()[0]
        h.pool.server_ready(task)
        container = task.container
        assert isinstance(container, InMemoryContainer)
        async with h.pool.request():
            h.pool.drain(task)
            await settle()
            assert container.status is None  # still serving the request
        await settle()
        assert container.status is not None

    asyncio.run(main())


def test_containers_that_keep_dying_before_ready_fail_requests_at_once_with_their_output() -> None:
    async def main() -> None:
        h = Harness(autoscaling=Autoscaling(min_containers=1))
        for _ in range(MAX_STARTUP_FAILURES):
            h.pool.reconcile()
            await settle()
            task = h.tasks()[0]
            assert isinstance(task.container, InMemoryContainer)
            task.output_tail.append(
                "ModuleNotFoundError: no module named 'flask'"
            )  # as the launcher keeps it
            task.container.exit(ExitStatus(code=1, signal=0))
            await settle()
        with pytest.raises(ServerUnavailable, match="flask"):
            async with h.pool.request(wait=60):
                pass
        assert not h.tasks()  # no more containers for a while

    asyncio.run(main())
