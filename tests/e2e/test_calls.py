"""Call semantics through the official client's Python API (in-process `with app.run()`)."""

from __future__ import annotations

import asyncio
import importlib
import time
from types import ModuleType

import pytest

from tests.conftest import KilnServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def calls_app(modal_client: None) -> ModuleType:
    return importlib.import_module("calls_app")


def test_local_runs_in_process(calls_app: ModuleType) -> None:
    assert calls_app.square.local(7) == 49
    assert calls_app.add.local(2, b=3) == 5


@pytest.mark.timeout(120)
def test_remote_and_local(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        assert calls_app.square.remote(12) == 144
        assert calls_app.add.remote(2, b=40) == 42
        assert calls_app.square.local(3) == 9


@pytest.mark.timeout(120)
def test_map_ordered_unordered_and_return_exceptions(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        # More inputs than one FunctionPutInputs batch (49) carries.
        assert list(calls_app.square.map(range(120))) == [i * i for i in range(120)]

        # Input 0 is the slowest: in order it still comes first, out of order it comes last.
        delays = [4.0, 0.0, 0.0, 0.0]
        assert list(calls_app.delayed.map(range(4), delays)) == [0, 1, 2, 3]
        unordered = list(calls_app.delayed.map(range(4), delays, order_outputs=False))
        assert sorted(unordered) == [0, 1, 2, 3]
        assert unordered[-1] == 0, f"order_outputs=False should yield the slow input last: {unordered}"

        results = list(calls_app.fail_on_odd.map(range(6), return_exceptions=True))
        assert [r for r in results if not isinstance(r, BaseException)] == [0, 2, 4]
        for i in (1, 3, 5):
            assert isinstance(results[i], ValueError), results
            assert f"odd input {i}" in str(results[i])
        assert results[0] == 0 and results[2] == 2 and results[4] == 4

        # Without return_exceptions the first failure is raised as the user's exception.
        with pytest.raises(ValueError, match="odd input"):
            list(calls_app.fail_on_odd.map(range(4)))


@pytest.mark.timeout(120)
def test_starmap_and_for_each(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        assert list(calls_app.add.starmap([(1, 2), (3, 4), (5, 6)])) == [3, 7, 11]
        assert list(calls_app.add.starmap([(1,), (2,)], kwargs={"b": 10})) == [11, 12]

        assert calls_app.square.for_each(range(5)) is None
        # for_each really runs its inputs: a failing one surfaces.
        with pytest.raises(ValueError, match="odd input 3"):
            calls_app.fail_on_odd.for_each([0, 3])


@pytest.mark.timeout(120)
def test_spawn_get_and_gather(calls_app: ModuleType) -> None:
    import modal

    with calls_app.app.run():
        call = calls_app.square.spawn(9)
        assert isinstance(call, modal.FunctionCall)
        assert call.object_id.startswith("fc-")
        assert call.get(timeout=60) == 81
        # A spawned call's result stays readable.
        assert call.get(timeout=60) == 81

        calls = [calls_app.add.spawn(i, b=100) for i in range(4)]
        assert modal.FunctionCall.gather(*calls) == [100, 101, 102, 103]


@pytest.mark.timeout(120)
def test_get_times_out_while_call_is_running(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        call = calls_app.delayed.spawn(5, 8.0)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            call.get(timeout=2)
        elapsed = time.monotonic() - start
        assert 1.5 <= elapsed < 10, f"get(timeout=2) returned after {elapsed:.1f}s"
        # The call itself was not affected: it finishes and its result can still be read.
        assert call.get(timeout=60) == 5


@pytest.mark.timeout(120)
def test_remote_gen(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        assert list(calls_app.countdown.remote_gen(5)) == [5, 4, 3, 2, 1]
        assert list(calls_app.countdown.remote_gen(0)) == []


@pytest.mark.timeout(120)
def test_aio_forms(calls_app: ModuleType) -> None:
    async def main() -> None:
        async with calls_app.app.run.aio():
            assert await calls_app.square.remote.aio(6) == 36
            assert await calls_app.async_double.remote.aio(21) == 42
            got = [x async for x in calls_app.square.map.aio(range(5))]
            assert got == [0, 1, 4, 9, 16]
            got = [x async for x in calls_app.add.starmap.aio([(1, 1), (2, 2)])]
            assert got == [2, 4]
            call = await calls_app.square.spawn.aio(11)
            assert await call.get.aio(timeout=60) == 121
            assert [x async for x in calls_app.countdown.remote_gen.aio(3)] == [3, 2, 1]

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_async_function_called_synchronously(calls_app: ModuleType) -> None:
    with calls_app.app.run():
        assert calls_app.async_double.remote(4) == 8
        assert list(calls_app.async_double.map([1, 2, 3])) == [2, 4, 6]


def test_server_is_alive(kiln: KilnServer) -> None:
    assert kiln.process.poll() is None, kiln.log()[-3000:]


@pytest.mark.timeout(120)
def test_arguments_and_results_over_2_mib_travel_as_blobs(calls_app: ModuleType, kiln: KilnServer) -> None:
    data = bytes(range(256)) * (3 * 2**20 // 256 + 1)
    with calls_app.app.run():
        assert calls_app.reversed_bytes.remote(data) == data[::-1]
    assert len(list((kiln.home / "blobs" / "blobs").iterdir())) >= 2
