"""Scaling: max/min/buffer containers, scale-down, single-use containers, runtime autoscaler
overrides, concurrent inputs and batching. Functions report which container ran each input and
when; the tests compute from that what ran at once."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e

Run = tuple[str, float, float]  # (task id, started, ended)


@pytest.fixture
def scaling_app(modal_client: None) -> ModuleType:
    return importlib.import_module("scaling_app")


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an interval ending as another starts: not open)."""
    spans = list(intervals)
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


def lifetimes(runs: list[Run]) -> dict[str, tuple[float, float]]:
    """Per container: from the start of its first input to the end of its last (a lower bound)."""
    spans: dict[str, tuple[float, float]] = {}
    for task, start, end in runs:
        first, last = spans.get(task, (start, end))
        spans[task] = (min(first, start), max(last, end))
    return spans


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def runners(function: object) -> int:
    return int(function.get_current_stats().num_total_runners)  # type: ignore[attr-defined]


def test_max_overlap() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3


@pytest.mark.timeout(180)
def test_max_containers_is_never_exceeded(scaling_app: ModuleType) -> None:
    capped = scaling_app.capped
    with scaling_app.app.run():
        seen: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                seen.append(runners(capped))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            runs = list(capped.map([1.0] * 12))
        finally:
            done.set()
            sampler.join()
    assert max_overlap(lifetimes(runs).values()) <= 3, runs
    assert max(seen) <= 3, seen
    assert max_overlap((start, end) for _, start, end in runs) >= 2, "it should scale out at all"


@pytest.mark.timeout(240)
def test_a_burst_scales_out_to_max_containers(scaling_app: ModuleType) -> None:
    burst = scaling_app.burst
    with scaling_app.app.run():
        started = time.time()
        runs = list(burst.map([1.0] * 50))
        total = time.time() - started
    spans = lifetimes(runs)
    assert len(spans) <= 10 and max_overlap(spans.values()) <= 10, spans
    assert max_overlap((start, end) for _, start, end in runs) > 2, "it should scale out"
    firsts = sorted(first for first, _ in spans.values())
    print(
        f"\n50-input burst, max_containers=10: {len(spans)} containers; "
        f"container #{len(firsts)} took its first input after {firsts[-1] - started:.1f} s; "
        f"total {total:.1f} s"
    )


@pytest.mark.timeout(120)
def test_idle_containers_stop_after_the_scaledown_window_and_not_before(scaling_app: ModuleType) -> None:
    function = scaling_app.quick_scaledown  # scaledown_window=3
    with scaling_app.app.run():
        first, _, ended = function.remote(0)
        assert runners(function) == 1
        time.sleep(1.5)
        assert runners(function) == 1, "stopped before its scale-down window"
        wait_for(lambda: runners(function) == 0, 15, "the idle container did not stop")
        assert time.time() - ended >= 3 - 0.5
        again, _, _ = function.remote(0)
        assert again != first


@pytest.mark.timeout(120)
def test_min_and_buffer_containers(modal_client: None) -> None:
    warm_app = importlib.import_module("warm_app")
    warm = warm_app.warm  # min_containers=1, buffer_containers=1, scaledown_window=2
    with warm_app.app.run():
        wait_for(lambda: runners(warm) == 1, 30, "min_containers=1 kept no container warm")
        time.sleep(3)  # longer than the scale-down window: the warm container stays
        assert runners(warm) == 1
        call = warm.spawn(6)
        # Under load: one container for the input plus one buffer container.
        wait_for(lambda: runners(warm) == 2, 20, "buffer_containers=1 added no container")
        call.get(timeout=60)
        wait_for(lambda: runners(warm) == 1, 20, "the buffer container did not scale down")


@pytest.mark.timeout(120)
def test_single_use_containers_run_one_input_each(scaling_app: ModuleType) -> None:
    with scaling_app.app.run():
        runs = list(scaling_app.single_use.map([0.1] * 4))
    assert len({task for task, _, _ in runs}) == 4, runs


@pytest.mark.timeout(120)
def test_update_autoscaler_overrides_the_settings_at_runtime(scaling_app: ModuleType) -> None:
    import modal.exception

    tunable = scaling_app.tunable
    with scaling_app.app.run():
        assert runners(tunable) == 0
        with pytest.warns(modal.exception.DeprecationError):
            tunable.update_autoscaler(min_containers=2)
        wait_for(lambda: runners(tunable) == 2, 30, "update_autoscaler(min_containers=2) started nothing")
        settings = tunable.autoscaler.settings()
        assert (settings.min_containers, settings.max_containers, settings.scaledown_window) == (2, None, 60)

        settings = tunable.autoscaler.update(min_containers=0, max_containers=1, scaledown_window=2)
        assert (settings.min_containers, settings.max_containers, settings.scaledown_window) == (0, 1, 2)
        wait_for(lambda: runners(tunable) == 0, 20, "min_containers=0 with a 2 s window stopped nothing")
        runs = list(tunable.map([0.3] * 4))
        assert len({task for task, _, _ in runs}) == 1, "max_containers=1 was not applied"


@pytest.mark.timeout(120)
def test_concurrent_inputs_share_one_container(scaling_app: ModuleType) -> None:
    concurrent = scaling_app.concurrent  # max_inputs=100, max_containers=1
    with scaling_app.app.run():
        concurrent.remote(0)  # start the container first: the timing below is of the inputs
        started = time.monotonic()
        runs = list(concurrent.map([0.1] * 100))
        elapsed = time.monotonic() - started
    assert len({task for task, _, _ in runs}) == 1
    overlap = max_overlap((start, end) for _, start, end in runs)
    print(f"\n100 concurrent inputs of 0.1 s: {elapsed:.2f} s, up to {overlap} at once")
    assert overlap > 10, f"only {overlap} inputs ran at once"
    assert elapsed < 8, f"100 inputs of 0.1 s took {elapsed:.1f} s: they did not run concurrently"


@pytest.mark.timeout(120)
def test_batched_function_sees_lists_of_up_to_max_batch_size(scaling_app: ModuleType) -> None:
    batched = scaling_app.batched  # max_batch_size=4, wait_ms=1000
    with scaling_app.app.run():
        results = list(batched.map(range(10)))
        single = batched.remote(42)
    assert [x for x, _, _ in results] == list(range(10))
    sizes = [size for _, size, _ in results]
    assert max(sizes) == 4 and all(1 <= s <= 4 for s in sizes), sizes
    # Each batch of size s contributes s results that all say s.
    assert all(sizes.count(s) % s == 0 for s in set(sizes)), sizes
    assert single[:2] == (42, 1)


def test_server_is_alive(kiln: KilnServer) -> None:
    assert kiln.process.poll() is None, kiln.log()[-3000:]


@pytest.mark.timeout(120)
def test_scaledown_runs_the_exit_hook(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "scaledown_exit_app.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The idle container stopped (through the kill switch, so @exit ran) while the app still ran.
    assert "KILN-EXIT-RAN" in output, output
    assert output.index("KILN-ENTER-RAN") < output.index("KILN-EXIT-RAN") < output.index("KILN-SLEEP-DONE"), (
        output
    )
