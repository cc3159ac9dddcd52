"""kiln.testing's light implementations behave like the real ones where tests rely on them."""

from __future__ import annotations

import asyncio
import signal

import pytest

from kiln.containers import ContainerHandle, ContainerSpec, ExitStatus, Runtime
from kiln.core.calls import CallLater
from kiln.core.functions import FunctionDef
from kiln.core.pool import Task
from kiln.testing import FakeClock, InMemoryContainer, InMemoryRuntime, RuntimeLauncher, settle

SPEC = ContainerSpec(image=[], argv=["true"])


def test_the_fake_clock_stands_still_until_advanced() -> None:
    clock = FakeClock()
    assert clock() == clock() == 1000.0
    clock.advance(2.5)
    assert clock() == 1002.5
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


def test_timers_run_when_due_soonest_first_and_in_order_of_setting_on_ties() -> None:
    clock = FakeClock()
    ran: list[tuple[str, float]] = []
    call_later: CallLater = clock.call_later
    call_later(2, lambda: ran.append(("b", clock())))
    call_later(1, lambda: ran.append(("a", clock())))
    call_later(2, lambda: ran.append(("c", clock())))
    clock.advance(0.5)
    assert ran == [] and clock.pending == [0.5, 1.5, 1.5]
    clock.advance(10)
    assert ran == [("a", 1001.0), ("b", 1002.0), ("c", 1002.0)]
    assert clock() == 1010.5 and clock.pending == []


def test_a_timer_set_by_a_timer_runs_in_the_same_advance_if_it_falls_due() -> None:
    clock = FakeClock()
    ran: list[float] = []

    def again() -> None:
        ran.append(clock())
        if len(ran) < 5:
            clock.call_later(1, again)

    clock.call_later(1, again)
    clock.advance(3)
    assert ran == [1001.0, 1002.0, 1003.0]
    assert clock.pending == [1.0]


def test_a_cancelled_timer_never_runs() -> None:
    clock = FakeClock()
    ran: list[str] = []
    clock.call_later(1, lambda: ran.append("kept"))
    clock.call_later(1, lambda: ran.append("cancelled")).cancel()
    assert clock.pending == [1.0]
    clock.advance(1)
    assert ran == ["kept"]


def test_an_in_memory_container_runs_until_told_how_it_ends() -> None:
    async def main() -> None:
        runtime = InMemoryRuntime()
        handle: ContainerHandle = await runtime.start(SPEC)
        (container,) = runtime.started
        assert container is handle and container.spec is SPEC
        waiter = asyncio.ensure_future(container.wait())
        await settle()
        assert not waiter.done() and container.status is None
        container.exit(ExitStatus(code=3, signal=None))
        container.exit(ExitStatus(code=0, signal=None))  # only the first ending counts
        assert await waiter == ExitStatus(code=3, signal=None) == container.status
        assert await container.kill() == ExitStatus(code=3, signal=None) and not container.killed

    asyncio.run(main())


def test_killing_an_in_memory_container_ends_it_with_sigkill() -> None:
    async def main() -> None:
        container = await InMemoryRuntime().start(SPEC)
        status = await container.kill(grace=5.0)
        assert container.killed and status.signal == signal.SIGKILL
        assert status.describe() == "killed by SIGKILL"

    asyncio.run(main())


def test_what_a_container_writes_reaches_its_sink() -> None:
    async def main() -> None:
        received: list[tuple[int, bytes]] = []
        container = await InMemoryRuntime().start(SPEC, sink=lambda fd, data: received.append((fd, data)))
        container.write(1, b"out")
        container.write(2, b"err")
        assert received == [(1, b"out"), (2, b"err")]
        silent = await InMemoryRuntime().start(SPEC)
        silent.write(1, b"dropped")  # without a sink, output goes nowhere
        assert len(received) == 2

    asyncio.run(main())


def test_shutdown_kills_only_the_containers_still_running() -> None:
    async def main() -> None:
        runtime: Runtime = InMemoryRuntime()
        done = await runtime.start(SPEC)
        running = await runtime.start(SPEC)
        assert isinstance(done, InMemoryContainer) and isinstance(running, InMemoryContainer)
        done.exit(ExitStatus(code=0, signal=None))
        await runtime.shutdown()
        assert running.killed and not done.killed
        assert isinstance(runtime, InMemoryRuntime) and runtime.running == []

    asyncio.run(main())


def test_the_runtime_launcher_starts_a_container_named_after_the_function() -> None:
    async def main() -> None:
        runtime = InMemoryRuntime()
        launcher = RuntimeLauncher(runtime)
        task = Task("ta-1", FunctionDef("fu-1", "ap-1", "f"))
        container = await launcher.launch(task)
        await launcher.cleanup(task)
        assert launcher.started == [task]
        assert runtime.started == [container]
        assert runtime.started[0].spec.argv == [task.function.tag]

    asyncio.run(main())
