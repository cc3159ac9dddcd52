"""The queues room on a state store in tmp_path: partitions, time to live, limits, waiting."""

import asyncio
import time
from pathlib import Path

import pytest

from kiln.errors import InvalidRequest, LimitExceeded, NotFound
from kiln.storage.queues import Queues
from kiln.storage.state import StateStore
from kiln.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def queues(tmp_path: Path, clock: FakeClock) -> Queues:
    return Queues(
        StateStore(tmp_path / "state.sqlite3"), clock=clock, max_partition_items=5, max_item_bytes=100
    )


def test_items_come_out_in_the_order_they_went_in(queues: Queues) -> None:
    q, _ = queues.create("q", "main")
    queues.put(q.object_id, [b"1", b"2"])
    queues.put(q.object_id, [b"3"])
    assert queues.take(q.object_id, 2) == [b"1", b"2"]
    assert queues.take(q.object_id, 5) == [b"3"]
    assert queues.take(q.object_id) == []


def test_partitions_are_separate_queues(queues: Queues) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"default"])
    queues.put(q.object_id, [b"a1", b"a2"], partition=b"a")
    assert queues.len(q.object_id) == 1
    assert queues.len(q.object_id, b"a") == 2
    assert queues.len(q.object_id, total=True) == 3
    assert queues.partitions(q.object_id) == (2, 3)
    assert queues.take(q.object_id, 5, b"a") == [b"a1", b"a2"]
    queues.clear(q.object_id)
    assert queues.len(q.object_id, total=True) == 0


def test_clear_all_partitions(queues: Queues) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"x"], partition=b"a")
    queues.put(q.object_id, [b"y"], partition=b"b")
    queues.clear(q.object_id, b"a")
    assert queues.len(q.object_id, total=True) == 1
    queues.clear(q.object_id, all_partitions=True)
    assert queues.partitions(q.object_id) == (0, 0)


def test_a_partition_expires_after_its_ttl_without_puts(queues: Queues, clock: FakeClock) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"short"], partition=b"a", ttl=10)
    queues.put(q.object_id, [b"long"], partition=b"b", ttl=100)
    clock.advance(9)
    queues.put(q.object_id, [b"again"], partition=b"a", ttl=10)  # a put renews the ttl
    clock.advance(9)
    assert queues.len(q.object_id, b"a") == 2
    clock.advance(2)
    assert queues.len(q.object_id, b"a") == 0
    assert queues.len(q.object_id, b"b") == 1
    clock.advance(100)
    queues.expire()
    assert queues.partitions(q.object_id) == (0, 0)
    assert queues.state.query("SELECT COUNT(*) FROM queue_items") == [(0,)]


def test_a_full_partition_refuses_puts_until_items_are_taken(queues: Queues) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"x"] * 4)
    with pytest.raises(LimitExceeded, match="full"):
        queues.put(q.object_id, [b"y", b"z"])
    assert queues.len(q.object_id) == 4  # all or nothing
    queues.put(q.object_id, [b"y"], partition=b"other")  # another partition has room
    queues.take(q.object_id)
    queues.put(q.object_id, [b"y", b"z"])
    assert queues.len(q.object_id) == 5


def test_items_that_can_never_fit_are_invalid(queues: Queues) -> None:
    q = queues.create_ephemeral("main")
    with pytest.raises(InvalidRequest, match="per item"):
        queues.put(q.object_id, [b"x" * 101])
    with pytest.raises(InvalidRequest, match="smaller batches"):
        queues.put(q.object_id, [b"x"] * 6)


def test_a_resent_put_is_added_once(queues: Queues) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"x"], request_id="key-1")
    queues.put(q.object_id, [b"x"], request_id="key-1")
    assert queues.len(q.object_id) == 1


def test_next_items_iterates_without_taking(queues: Queues) -> None:
    async def main() -> None:
        q = queues.create_ephemeral("main")
        queues.put(q.object_id, [b"1", b"2", b"3"])
        items = await queues.next_items(q.object_id)
        assert [v for _, v in items] == [b"1", b"2", b"3"]
        assert await queues.next_items(q.object_id, after=items[1][0]) == [items[2]]
        assert await queues.next_items(q.object_id, after=items[2][0], timeout=0.01) == []
        assert queues.len(q.object_id) == 3

    asyncio.run(main())


def test_a_blocked_get_wakes_at_once_when_an_item_is_put(queues: Queues) -> None:
    async def main() -> None:
        q = queues.create_ephemeral("main")
        waiter = asyncio.ensure_future(queues.get(q.object_id, 1, b"p", timeout=10))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        queues.put(q.object_id, [b"other"])  # another partition: no item for it
        await asyncio.sleep(0.01)
        assert not waiter.done()
        started = time.monotonic()
        queues.put(q.object_id, [b"hello"], partition=b"p")
        assert await asyncio.wait_for(waiter, 1) == [b"hello"]
        assert time.monotonic() - started < 0.5

    asyncio.run(main())


def test_a_get_gives_up_after_its_timeout(queues: Queues) -> None:
    async def main() -> None:
        q = queues.create_ephemeral("main")
        assert await queues.get(q.object_id, 1, timeout=0.05) == []
        assert await queues.get(q.object_id, 1, timeout=0) == []
        assert queues._waiters == {}

    asyncio.run(main())


def test_two_waiters_share_items_each_once(queues: Queues) -> None:
    async def main() -> None:
        q = queues.create_ephemeral("main")
        waiters = [asyncio.ensure_future(queues.get(q.object_id, 1, timeout=2)) for _ in range(2)]
        await asyncio.sleep(0.01)
        queues.put(q.object_id, [b"a"])
        queues.put(q.object_id, [b"b"])
        got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
        assert sorted(v for values in got for v in values) == [b"a", b"b"]
        assert queues._waiters == {}  # no signal is kept for partitions nobody waits on

    asyncio.run(main())


def test_deleting_a_queue_wakes_its_waiters_with_not_found(queues: Queues) -> None:
    async def main() -> None:
        q, _ = queues.create("q", "main")
        waiter = asyncio.ensure_future(queues.get(q.object_id, 1, timeout=10))
        await asyncio.sleep(0.01)
        queues.delete(q.object_id)
        with pytest.raises(NotFound):
            await asyncio.wait_for(waiter, 1)

    asyncio.run(main())


def test_an_ephemeral_queue_goes_when_its_heartbeats_stop(queues: Queues, clock: FakeClock) -> None:
    q = queues.create_ephemeral("main")
    queues.put(q.object_id, [b"x"], partition=b"p")
    clock.advance(901)
    assert queues.expire() == [q.object_id]
    assert queues.state.query("SELECT COUNT(*) FROM queue_items") == [(0,)]
    assert queues.state.query("SELECT COUNT(*) FROM queue_partitions") == [(0,)]


def test_items_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    queues = Queues(StateStore(path))
    q, _ = queues.create("jobs", "main")
    queues.put(q.object_id, [b"1", b"2"], partition=b"p")
    queues.state.close()
    reopened = Queues(StateStore(path))
    assert reopened.take(q.object_id, 5, b"p") == [b"1", b"2"]
