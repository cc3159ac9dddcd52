"""Long-poll primitives: Changed and LogBuffer."""

import asyncio
import time

from kiln.streams import INFO, STDERR, STDOUT, Changed, LogBuffer


def test_changed_wakes_every_waiter() -> None:
    async def main() -> None:
        changed = Changed()
        waiters = [asyncio.ensure_future(changed.wait(5)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        changed.notify()
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]

    asyncio.run(main())


def test_changed_times_out_false() -> None:
    async def main() -> None:
        started = time.monotonic()
        assert await Changed().wait(0.03) is False
        assert time.monotonic() - started >= 0.02

    asyncio.run(main())


def test_changed_waits_for_the_next_notify_only() -> None:
    async def main() -> None:
        changed = Changed()
        changed.notify()  # nobody waiting: not remembered
        assert await changed.wait(0.02) is False
        waiter = asyncio.ensure_future(changed.wait(5))
        await asyncio.sleep(0.01)
        changed.notify()
        assert await asyncio.wait_for(waiter, 1) is True
        assert await changed.wait(0.02) is False  # the earlier notify is spent

    asyncio.run(main())


def test_entries_are_numbered_from_one_and_read_after_a_cursor() -> None:
    logs = LogBuffer()
    logs.append("a")
    logs.append("b", STDERR)
    logs.append("c", INFO, task_id="ta-1", function_id="fu-1")
    entries = [(e.entry_id, e.data, e.fd) for e in logs.after(0)]
    assert entries == [(1, "a", STDOUT), (2, "b", STDERR), (3, "c", INFO)]
    assert [e.data for e in logs.after(1)] == ["b", "c"]
    assert logs.after(3) == []
    assert logs.after(99) == []
    last = logs.after(2)[0]
    assert (last.task_id, last.function_id, last.image_id) == ("ta-1", "fu-1", "")


def test_empty_data_is_not_an_entry() -> None:
    logs = LogBuffer()
    logs.append("")
    logs.append("x")
    assert [(e.entry_id, e.data) for e in logs.after(0)] == [(1, "x")]


def test_read_returns_at_once_when_there_is_something_newer() -> None:
    async def main() -> None:
        logs = LogBuffer()
        logs.append("a")
        entries = await asyncio.wait_for(logs.read(0, timeout=30), 1)
        assert [e.data for e in entries] == ["a"]

    asyncio.run(main())


def test_read_waits_for_an_append() -> None:
    async def main() -> None:
        logs = LogBuffer()
        logs.append("old")
        reader = asyncio.ensure_future(logs.read(1, timeout=5))
        await asyncio.sleep(0.01)
        assert not reader.done()
        logs.append("new")
        entries = await asyncio.wait_for(reader, 1)
        assert [(e.entry_id, e.data) for e in entries] == [(2, "new")]

    asyncio.run(main())


def test_read_times_out_empty() -> None:
    async def main() -> None:
        logs = LogBuffer()
        started = time.monotonic()
        assert await logs.read(0, timeout=0.03) == []
        assert time.monotonic() - started >= 0.02

    asyncio.run(main())


def test_close_wakes_readers_and_later_reads_do_not_wait() -> None:
    async def main() -> None:
        logs = LogBuffer()
        reader = asyncio.ensure_future(logs.read(0, timeout=30))
        await asyncio.sleep(0.01)
        logs.close()
        assert await asyncio.wait_for(reader, 1) == []
        assert logs.closed
        assert await asyncio.wait_for(logs.read(0, timeout=30), 1) == []

    asyncio.run(main())


def test_closed_buffer_still_returns_what_it_holds() -> None:
    async def main() -> None:
        logs = LogBuffer()
        logs.append("last words")
        logs.close()
        assert [e.data for e in await logs.read(0, timeout=30)] == ["last words"]

    asyncio.run(main())


def test_trimming_keeps_the_newest_entries_and_their_ids() -> None:
    logs = LogBuffer(max_entries=3)
    for text in "abcde":
        logs.append(text)
    assert [(e.entry_id, e.data) for e in logs.after(0)] == [(3, "c"), (4, "d"), (5, "e")]
    assert [e.data for e in logs.after(3)] == ["d", "e"]
    logs.append("f")
    assert [(e.entry_id, e.data) for e in logs.after(5)] == [(6, "f")]
    assert [e.entry_id for e in logs.after(0)] == [4, 5, 6]


def test_a_waiter_cancelled_as_it_is_woken_stays_cancelled() -> None:
    # asyncio.wait_for (before Python 3.12) drops a cancellation that arrives just as its inner
    # wait finishes; a long poll (a server-streaming handler) then outlives its cancelled stream.
    async def cancelled_after(steps: int) -> bool | None:
        changed = Changed()
        waiter = asyncio.ensure_future(changed.wait(5))
        await asyncio.sleep(0.01)
        changed.notify()
        for _ in range(steps):
            await asyncio.sleep(0)
        if not waiter.cancel():
            return await waiter  # it had already returned
        try:
            await waiter
        except asyncio.CancelledError:
            return None
        raise AssertionError(f"the cancellation {steps} loop steps after notify() was lost")

    async def main() -> None:
        outcomes = [await cancelled_after(steps) for steps in range(6)]
        assert None in outcomes and True in outcomes  # both sides of the race were run

    asyncio.run(main())
