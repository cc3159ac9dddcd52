"""Reliability: timeouts, server-side retries, containers that die mid-input, cancellation."""

from __future__ import annotations

import importlib
import itertools
import time
from types import ModuleType

import pytest

from tests.conftest import KilnServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def reliability_app(modal_client: None) -> ModuleType:
    return importlib.import_module("reliability_app")


@pytest.mark.timeout(120)
def test_timeout_raises_the_clients_timeout_error_and_replaces_the_container(
    reliability_app: ModuleType,
) -> None:
    import modal.exception

    sleeper = reliability_app.sleeper
    with reliability_app.app.run():
        first = sleeper.remote(0)
        started = time.monotonic()
        with pytest.raises(modal.exception.FunctionTimeoutError) as info:
            sleeper.remote(60)
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"a 3 s timeout took {elapsed:.0f} s to fire"
        message = str(info.value)
        assert "sleeper" in message and "timeout" in message and "3 s" in message, message
        # The timed-out container was killed; a fresh one serves the function.
        assert sleeper.remote(0) != first


@pytest.mark.timeout(120)
def test_a_timeout_requeues_the_other_inputs_of_its_container_without_charging_them(
    reliability_app: ModuleType,
) -> None:
    import modal.exception

    shared = reliability_app.shared_sleeper
    with reliability_app.app.run():
        shared.remote(0)  # a warm container: the inputs below start at once
        doomed = shared.spawn(60)
        time.sleep(3)
        # Joins the same container; still running when the first input's 8 s timeout kills it.
        survivor = shared.spawn(7)
        with pytest.raises(modal.exception.FunctionTimeoutError):
            doomed.get(timeout=60)
        # It was running when its container was killed; with no retries configured, only a
        # requeue that does not charge a retry lets it succeed on a new container.
        assert survivor.get(timeout=60).startswith("ta-")


@pytest.mark.timeout(120)
def test_failed_attempts_are_retried_with_exponential_backoff(reliability_app: ModuleType) -> None:
    with reliability_app.app.run():
        attempts = reliability_app.flaky.remote("backoff", 3)
    assert len(attempts) == 4, attempts
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Retries(initial_delay=1, backoff_coefficient=2): about 1 s, 2 s, 4 s apart.
    for gap, delay in zip(gaps, [1.0, 2.0, 4.0], strict=True):
        assert delay * 0.9 <= gap < delay + 5, f"gaps {gaps} should follow 1, 2, 4 s"


@pytest.mark.timeout(120)
def test_retries_in_a_map_deliver_each_result_once(reliability_app: ModuleType) -> None:
    with reliability_app.app.run():
        results = list(reliability_app.flaky.map([f"map-{i}" for i in range(6)], [i % 2 for i in range(6)]))
    assert [len(r) for r in results] == [1, 2, 1, 2, 1, 2]


@pytest.mark.timeout(120)
def test_only_the_final_failure_is_published_once_retries_are_exhausted(
    reliability_app: ModuleType,
) -> None:
    with reliability_app.app.run():
        with pytest.raises(ValueError, match="attempt 3 of exhausted fails"):
            reliability_app.always_fails.remote("exhausted")  # retries=2: three attempts


@pytest.mark.timeout(120)
def test_an_input_whose_container_dies_is_retried_on_a_new_container(reliability_app: ModuleType) -> None:
    dies_until = reliability_app.dies_until
    with reliability_app.app.run():
        warm = dies_until.remote(0)
        # The warm container takes the input at once and dies; the retry comes after 1 s.
        survivor = dies_until.remote(time.time() + 0.8)
        assert survivor.startswith("ta-") and survivor != warm


@pytest.mark.timeout(120)
def test_cancelling_a_running_call_through_the_heartbeat(reliability_app: ModuleType) -> None:
    cancellable = reliability_app.cancellable
    with reliability_app.app.run():
        first = cancellable.remote(0)
        call = cancellable.spawn(50)
        time.sleep(2)  # let it start running
        started = time.monotonic()
        call.cancel()
        with pytest.raises(Exception) as info:
            call.get(timeout=40)
        assert not isinstance(info.value, TimeoutError), "the cancelled call never ended"
        # Cancelled at the container's next heartbeat (every 15 s), long before its 50 s ran out.
        assert time.monotonic() - started < 30
        # The input was cancelled, not its container: it serves the next call.
        assert cancellable.remote(0) == first


@pytest.mark.timeout(120)
def test_cancelling_with_terminate_containers_kills_the_container(reliability_app: ModuleType) -> None:
    cancellable = reliability_app.cancellable
    with reliability_app.app.run():
        first = cancellable.remote(0)
        call = cancellable.spawn(50)
        time.sleep(2)
        started = time.monotonic()
        call.cancel(terminate_containers=True)
        with pytest.raises(Exception) as info:
            call.get(timeout=40)
        assert not isinstance(info.value, TimeoutError), "the cancelled call never ended"
        assert time.monotonic() - started < 10
        assert cancellable.remote(0) != first


@pytest.mark.timeout(120)
def test_startup_timeout_fails_the_call_after_replacing_the_container(modal_client: None) -> None:
    import modal.exception

    slow_start = importlib.import_module("slow_start_app")
    with slow_start.app.run():
        started = time.monotonic()
        with pytest.raises(modal.exception.FunctionTimeoutError) as info:
            slow_start.never_ready.remote()
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert "startup timeout" in message and "2 s" in message, message
    # Three containers were tried (2 s each) before the input failed, well before 120 s.
    assert 5 < elapsed < 60, elapsed


def test_server_is_alive(kiln: KilnServer) -> None:
    assert kiln.process.poll() is None, kiln.log()[-3000:]
