"""Calls, input queues and outputs (pure asyncio; no server)."""

import asyncio
import re
import time

from kiln.core.calls import Calls, DataChunk, FunctionCall, Invocation
from kiln.core.results import Result, Status
from kiln.testing import settle

FN = "fu-one"
OK = Result(Status.SUCCESS, payload=b"ok")


def new_call(calls: Calls, function_id: str = FN) -> FunctionCall:
    return calls.create(function_id, "ap-x", Invocation.SYNC, is_map=False)


def items(*idxs: int) -> list[tuple[int, bytes, str, bool]]:
    return [(i, f"payload-{i}".encode(), "", False) for i in idxs]


def test_put_inputs_queues_each_item() -> None:
    calls = Calls()
    seen: list[str] = []
    calls.on_enqueue.append(seen.append)
    call = new_call(calls)
    created = calls.put_inputs(call, [(0, b"a", "m", False), (1, b"b", "", True)])
    assert [(i.idx, i.payload, i.method_name, i.final) for i in created] == [
        (0, b"a", "m", False),
        (1, b"b", "", True),
    ]
    assert all(re.fullmatch(r"in-[A-Za-z0-9]{22}", i.input_id) for i in created)
    assert len({i.input_id for i in created}) == 2
    assert all(i.call_id == call.call_id and i.function_id == FN for i in created)
    assert (call.num_inputs, call.unfinished) == (2, 2)
    assert calls.load(FN) == (2, 0)
    assert seen == [FN]
    assert calls.get(call.call_id) is call


def test_take_is_first_in_first_out_across_calls() -> None:
    async def main() -> None:
        calls = Calls()
        first, second = new_call(calls), new_call(calls)
        a = calls.put_inputs(first, items(0, 1))
        b = calls.put_inputs(second, items(0))
        c = calls.put_inputs(first, items(2))
        taken1 = await calls.take(FN, "ta-1", max_items=2, timeout=1)
        taken2 = await calls.take(FN, "ta-2", max_items=5, timeout=1)
        assert [i.input_id for i in taken1] == [a[0].input_id, a[1].input_id]
        assert [i.input_id for i in taken2] == [b[0].input_id, c[0].input_id]
        assert {i.task_id for i in taken1} == {"ta-1"} and {i.task_id for i in taken2} == {"ta-2"}
        assert calls.load(FN) == (0, 4)

    asyncio.run(main())


def test_take_only_sees_its_own_function() -> None:
    async def main() -> None:
        calls = Calls()
        calls.put_inputs(new_call(calls, "fu-other"), items(0))
        assert await calls.take(FN, "ta-1", max_items=1, timeout=0) == []
        assert calls.load("fu-other") == (1, 0)

    asyncio.run(main())


def test_take_returns_empty_once_its_timeout_has_passed() -> None:
    async def main() -> None:
        calls = Calls()
        started = time.monotonic()  # a real wait: the queue's wake-ups are asyncio timeouts
        assert await calls.take(FN, "ta-1", max_items=1, timeout=0.02) == []
        assert 0.02 <= time.monotonic() - started < 1

    asyncio.run(main())


def test_take_wakes_when_an_input_arrives() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        waiter = asyncio.ensure_future(calls.take(FN, "ta-1", max_items=1, timeout=5))
        await settle()
        assert not waiter.done()
        (item,) = calls.put_inputs(call, items(7))
        taken = await asyncio.wait_for(waiter, 1)
        assert [i.input_id for i in taken] == [item.input_id]

    asyncio.run(main())


def test_take_returns_early_when_stopped() -> None:
    async def main() -> None:
        calls = Calls()
        assert await asyncio.wait_for(calls.take(FN, "ta-1", 1, timeout=5, stop=lambda: True), 1) == []
        stopping = False
        waiter = asyncio.ensure_future(calls.take(FN, "ta-1", 1, timeout=5, stop=lambda: stopping))
        await settle()
        stopping = True
        calls.queues[FN].changed.notify()  # what draining a container does
        assert await asyncio.wait_for(waiter, 1) == []

    asyncio.run(main())


def test_complete_records_an_output() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        _first, second = calls.put_inputs(call, items(0, 1))
        await calls.take(FN, "ta-1", max_items=2, timeout=1)
        assert calls.complete(second.input_id, OK) is second
        assert call.unfinished == 1
        assert calls.load(FN) == (0, 1)
        (output,) = call.outputs
        assert (output.input_id, output.idx, output.task_id) == (second.input_id, 1, "ta-1")
        assert output.result == OK

    asyncio.run(main())


def test_complete_twice_or_unknown_is_ignored() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        (item,) = calls.put_inputs(call, items(0))
        await calls.take(FN, "ta-1", max_items=1, timeout=1)
        calls.complete(item.input_id, OK)
        assert calls.complete(item.input_id, Result(Status.FAILURE, "late")) is None
        assert calls.complete("in-unknown", OK) is None
        assert [o.result for o in call.outputs] == [OK]
        assert call.unfinished == 0
        assert calls.load(FN) == (0, 0)

    asyncio.run(main())


def test_wait_outputs_returns_the_outputs_past_a_cursor_in_arrival_order() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        inputs = calls.put_inputs(call, items(0, 1, 2))
        await calls.take(FN, "ta-1", max_items=3, timeout=1)
        calls.complete(inputs[2].input_id, OK)
        calls.complete(inputs[0].input_id, OK)
        got = await calls.wait_outputs(call, 0, timeout=1)
        assert [o.idx for o in got] == [2, 0]  # arrival order
        assert [o.idx for o in await calls.wait_outputs(call, 1, timeout=1)] == [0]
        started = time.monotonic()  # a real wait: wake-ups are asyncio timeouts
        assert await calls.wait_outputs(call, 2, timeout=0.02) == []
        assert time.monotonic() - started >= 0.015
        waiter = asyncio.ensure_future(calls.wait_outputs(call, 2, timeout=5))
        await settle()
        assert not waiter.done()
        calls.complete(inputs[1].input_id, OK)
        assert [o.idx for o in await asyncio.wait_for(waiter, 1)] == [1]

    asyncio.run(main())


def test_wait_outputs_returns_at_once_when_the_call_is_finished() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        (item,) = calls.put_inputs(call, items(0))
        calls.complete(item.input_id, OK)
        assert await asyncio.wait_for(calls.wait_outputs(call, 1, timeout=30), 1) == []

    asyncio.run(main())


def test_cancel_terminates_queued_inputs_and_returns_running_ones() -> None:
    async def main() -> None:
        calls = Calls()
        call = new_call(calls)
        running, q1, q2 = calls.put_inputs(call, items(0, 1, 2))
        await calls.take(FN, "ta-1", max_items=1, timeout=1)
        returned = calls.cancel(call.call_id, "stop it")
        assert [i.input_id for i in returned] == [running.input_id]
        assert call.cancelled
        assert call.unfinished == 1
        results = {o.input_id: o.result for o in call.outputs}
        assert set(results) == {q1.input_id, q2.input_id}
        assert all(r.status == Status.TERMINATED and r.message == "stop it" for r in results.values())
        # Cancelled inputs are never handed to a container.
        assert await calls.take(FN, "ta-2", max_items=5, timeout=0) == []

    asyncio.run(main())


def test_cancelled_inputs_no_longer_count_as_queued() -> None:
    # The autoscaler reads load(); cancelled inputs must not make it start containers.
    calls = Calls()
    call = new_call(calls)
    calls.put_inputs(call, items(0, 1, 2))
    calls.cancel(call.call_id)
    assert calls.load(FN) == (0, 0)


def test_cancelling_an_unknown_call_returns_no_inputs() -> None:
    assert Calls().cancel("fc-nope") == []


def test_fail_pending_fails_every_queued_input() -> None:
    async def main() -> None:
        calls = Calls()
        one, two = new_call(calls), new_call(calls)
        calls.put_inputs(one, items(0, 1))
        calls.put_inputs(two, items(0))
        calls.put_inputs(new_call(calls, "fu-other"), items(0))
        failure = Result(Status.INIT_FAILURE, "image is broken")
        calls.fail_pending(FN, failure)
        assert [o.result for o in one.outputs] == [failure, failure]
        assert [o.result for o in two.outputs] == [failure]
        assert one.unfinished == two.unfinished == 0
        assert calls.load(FN) == (0, 0)
        assert calls.load("fu-other") == (1, 0)
        assert await calls.wait_outputs(one, 0, timeout=0) == one.outputs

    asyncio.run(main())


def test_release_forgets_the_call() -> None:
    calls = Calls()
    call = new_call(calls)
    calls.put_inputs(call, items(0))
    calls.release(call.call_id)
    assert calls.get(call.call_id) is None


def test_data_out_is_ordered_and_deduplicated() -> None:
    calls = Calls()
    call = new_call(calls)
    calls.put_data_out(call.call_id, [DataChunk(2, 0, b"b"), DataChunk(1, 0, b"a")])
    calls.put_data_out(call.call_id, [DataChunk(2, 0, b"dup"), DataChunk(3, 0, b"c")])
    assert [(c.index, c.data) for c in call.data_out] == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_lingering_gathers_outputs_that_arrive_shortly_after_the_first() -> None:
    async def scenario() -> int:
        calls = Calls()
        call = new_call(calls)
        inputs = calls.put_inputs(call, items(0, 1, 2))
        await calls.take(FN, "ta-1", max_items=3, timeout=1)

        async def finish_later() -> None:
            calls.complete(inputs[0].input_id, OK)
            await asyncio.sleep(0.005)
            calls.complete(inputs[1].input_id, OK)

        finisher = asyncio.ensure_future(finish_later())
        outputs = await calls.wait_outputs(call, 0, timeout=1, linger=0.05)
        await finisher
        return len(outputs)

    assert asyncio.run(scenario()) == 2


def test_data_out_after_an_index_skips_the_chunks_up_to_it() -> None:
    calls = Calls()
    call = new_call(calls)
    calls.put_data_out(call.call_id, [DataChunk(i, 0, b"x") for i in (1, 2, 3, 5)])
    calls.put_data_out(call.call_id, [DataChunk(4, 0, b"late")])
    assert [c.index for c in calls.data_out_after(call, 0)] == [1, 2, 3, 4, 5]
    assert [c.index for c in calls.data_out_after(call, 3)] == [4, 5]
    assert calls.data_out_after(call, 5) == []
