"""Retry policies and what Calls does with a failed attempt: backoff, requeues, batches."""

from __future__ import annotations

import asyncio

import pytest

from kiln.core.calls import Calls, FunctionCall, Input, Invocation, retry_delay
from kiln.core.functions import RetryPolicy
from kiln.core.results import Result, Status
from kiln.testing import FakeClock, settle

FN = "fu-one"
OK = Result(Status.SUCCESS, payload=b"ok")
BOOM = Result(Status.FAILURE, "boom", payload=b"pickled exception")


def setup(retries: int = 0, **policy: float) -> tuple[Calls, FakeClock, FunctionCall]:
    clock = FakeClock()  # drives the backoffs; takes below wait for nothing or for real (lingering)
    calls = Calls(call_later=clock.call_later)
    call = calls.create(FN, "ap-x", Invocation.SYNC, is_map=True, retry=RetryPolicy(retries, **policy))
    return calls, clock, call


def put(calls: Calls, call: FunctionCall, *idxs: int, method: str = "") -> list[Input]:
    return calls.put_inputs(call, [(i, b"", method, False) for i in idxs])


async def take(calls: Calls, task_id: str, n: int = 1, linger: float = 0.0) -> list[Input]:
    """What is queued now (no waiting for more, unless lingering for a full batch)."""
    return await calls.take(FN, task_id, max_items=n, timeout=0.0, linger=linger)


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (RetryPolicy(5, backoff_coefficient=2.0, initial_delay=1.0, max_delay=60.0), [1, 2, 4, 8, 16]),
        (RetryPolicy(4, backoff_coefficient=3.0, initial_delay=2.0, max_delay=30.0), [2, 6, 18, 30]),
        (RetryPolicy(3, backoff_coefficient=1.0, initial_delay=5.0, max_delay=60.0), [5, 5, 5]),
    ],
)
def test_a_policy_backs_off_exponentially_up_to_its_max_delay(
    policy: RetryPolicy, delays: list[float]
) -> None:
    assert [policy.delay(n) for n in range(1, len(delays) + 1)] == delays


def test_retry_delay_is_clamped_to_modals_bounds() -> None:
    assert retry_delay(RetryPolicy(1, initial_delay=0.0), 1) == 1.0
    assert retry_delay(RetryPolicy(1, initial_delay=0.2, max_delay=0.5), 1) == 1.0
    huge = RetryPolicy(30, backoff_coefficient=10.0, initial_delay=60.0, max_delay=1e9)
    assert retry_delay(huge, 10) == 24 * 3600


def test_a_failure_is_retried_after_the_backoff_until_retries_run_out() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=2, backoff_coefficient=2.0, initial_delay=1.0)
        (item,) = put(calls, call, 0)
        await take(calls, "ta-1")
        assert calls.settle(item.input_id, BOOM, "ta-1") is item
        assert call.outputs == [] and call.unfinished == 1
        assert clock.pending == [1.0]
        clock.advance(0.5)
        assert calls.load(FN) == (0, 0)  # waiting out its 1 s backoff: neither queued nor running
        clock.advance(0.5)
        assert calls.load(FN) == (1, 0)

        assert [i.retry_count for i in await take(calls, "ta-2")] == [1]
        calls.settle(item.input_id, BOOM, "ta-2")
        assert clock.pending == [2.0]
        clock.advance(2.0)
        await take(calls, "ta-3")
        calls.settle(item.input_id, BOOM, "ta-3")  # the third failure is final
        assert clock.pending == []
        assert [(o.result, o.retry_count, o.task_id) for o in call.outputs] == [(BOOM, 0, "ta-3")]
        assert call.unfinished == 0 and calls.retries == 2

    asyncio.run(main())


def test_success_after_a_retry_is_the_only_output() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=3)
        (item,) = put(calls, call, 0)
        await take(calls, "ta-1")
        calls.settle(item.input_id, BOOM, "ta-1")
        clock.advance(1.0)
        await take(calls, "ta-1")
        calls.settle(item.input_id, OK, "ta-1")
        assert [o.result for o in call.outputs] == [OK]

    asyncio.run(main())


def test_news_from_a_stale_attempt_is_ignored() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=1)
        (item,) = put(calls, call, 0)
        await take(calls, "ta-old")
        calls.settle(item.input_id, BOOM, "ta-old")
        clock.advance(1.0)
        await take(calls, "ta-new")
        assert not calls.holds(item.input_id, "ta-old")
        assert not calls.holds(item.input_id, "ta-new", retry_count=0)
        assert calls.holds(item.input_id, "ta-new", retry_count=1)
        assert calls.settle(item.input_id, OK, "ta-old") is None
        assert calls.complete(item.input_id, OK, "ta-old") is None
        assert call.outputs == []
        calls.settle(item.input_id, OK, "ta-new")
        assert [o.task_id for o in call.outputs] == ["ta-new"]

    asyncio.run(main())


def test_terminated_and_cancelled_inputs_are_never_retried() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=5)
        first, second = put(calls, call, 0, 1)
        await take(calls, "ta-1", n=2)
        calls.settle(first.input_id, Result(Status.TERMINATED), "ta-1")
        calls.cancel(call.call_id)
        # kiln's own failure of a cancelled call's input (its container died) reads as cancelled.
        calls.settle(second.input_id, Result(Status.FAILURE, "container died"), "ta-1")
        assert clock.pending == []
        assert [o.result.status for o in call.outputs] == [Status.TERMINATED, Status.TERMINATED]

    asyncio.run(main())


def test_cancel_during_the_backoff_terminates_the_input() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=1)
        (item,) = put(calls, call, 0)
        await take(calls, "ta-1")
        calls.settle(item.input_id, BOOM, "ta-1")
        calls.cancel(call.call_id)
        assert [o.result.status for o in call.outputs] == [Status.TERMINATED]
        clock.advance(1.0)
        assert calls.load(FN) == (0, 0)
        assert await take(calls, "ta-2") == []

    asyncio.run(main())


def test_requeue_returns_inputs_to_the_front_without_charging_a_retry() -> None:
    async def main() -> None:
        calls, clock, call = setup(retries=0)
        a, b, c = put(calls, call, 0, 1, 2)
        await take(calls, "ta-1", n=2)
        calls.requeue([a.input_id, b.input_id], "ta-1")
        assert calls.load(FN) == (3, 0)
        again = await take(calls, "ta-2", n=3)
        assert [i.input_id for i in again] == [a.input_id, b.input_id, c.input_id]
        assert [i.retry_count for i in again] == [0, 0, 0]
        assert clock.pending == []

    asyncio.run(main())


def test_requeue_terminates_inputs_of_cancelled_calls() -> None:
    async def main() -> None:
        calls, _, call = setup()
        (item,) = put(calls, call, 0)
        await take(calls, "ta-1")
        calls.cancel(call.call_id)
        calls.requeue([item.input_id], "ta-1")
        assert [o.result.status for o in call.outputs] == [Status.TERMINATED]
        assert calls.load(FN) == (0, 0)

    asyncio.run(main())


def test_a_batch_shares_one_method_name() -> None:
    async def main() -> None:
        calls, _, call = setup()
        put(calls, call, 0, method="a")
        put(calls, call, 1, method="b")
        put(calls, call, 2, 3, method="a")
        batch = await take(calls, "ta-1", n=4)
        assert [(i.idx, i.method_name) for i in batch] == [(0, "a"), (2, "a"), (3, "a")]
        assert [i.idx for i in await take(calls, "ta-1", n=4)] == [1]

    asyncio.run(main())


def test_a_batch_lingers_until_full() -> None:
    async def main() -> None:
        calls, _, call = setup()
        put(calls, call, 0)
        waiter = asyncio.ensure_future(take(calls, "ta-1", n=3, linger=5.0))
        await settle()
        put(calls, call, 1)
        await settle()
        assert not waiter.done()
        put(calls, call, 2, 3)
        assert [i.idx for i in await asyncio.wait_for(waiter, 1)] == [0, 1, 2]

    asyncio.run(main())


def test_a_batch_lingers_no_longer_than_asked() -> None:
    async def main() -> None:
        calls, _, call = setup()
        put(calls, call, 0, 1)
        batch = await asyncio.wait_for(take(calls, "ta-1", n=4, linger=0.02), 1)
        assert [i.idx for i in batch] == [0, 1]

    asyncio.run(main())
