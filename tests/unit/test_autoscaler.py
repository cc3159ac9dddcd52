"""Scaling decisions as pure functions of settings, load and a (fake) clock."""

import pytest

from kiln.core.autoscaler import (
    Load,
    container_limit,
    containers_to_start,
    containers_to_stop,
    desired_containers,
    should_scale_down,
    timed_out,
)
from kiln.core.functions import Autoscaling
from kiln.testing import FakeClock


def load(queued: int = 0, running: int = 0, containers: int = 0, stopping: int = 0) -> Load:
    return Load(queued=queued, running=running, containers=containers, stopping=stopping)


def test_no_load_wants_no_containers() -> None:
    assert desired_containers(Autoscaling(), 1, load()) == 0


def test_one_container_per_input_by_default() -> None:
    assert desired_containers(Autoscaling(), 1, load(queued=3, running=2)) == 5


@pytest.mark.parametrize(
    ("demand", "target", "wanted"), [(1, 4, 1), (4, 4, 1), (5, 4, 2), (9, 3, 3), (10, 3, 4)]
)
def test_target_inputs_per_container_rounds_up(demand: int, target: int, wanted: int) -> None:
    assert desired_containers(Autoscaling(), target, load(queued=demand)) == wanted


def test_running_inputs_count_as_demand() -> None:
    assert desired_containers(Autoscaling(), 2, load(running=4)) == 2


def test_target_inputs_below_one_is_treated_as_one() -> None:
    assert desired_containers(Autoscaling(), 0, load(queued=3)) == 3


def test_min_containers_kept_without_load() -> None:
    assert desired_containers(Autoscaling(min_containers=2), 1, load()) == 2


def test_min_containers_is_a_floor_not_an_addition() -> None:
    assert desired_containers(Autoscaling(min_containers=2), 1, load(queued=5)) == 5


def test_buffer_added_only_under_load() -> None:
    settings = Autoscaling(buffer_containers=2)
    assert desired_containers(settings, 1, load()) == 0
    assert desired_containers(settings, 1, load(queued=1)) == 3


def test_max_containers_caps_demand_and_buffer() -> None:
    settings = Autoscaling(max_containers=3, buffer_containers=2)
    assert desired_containers(settings, 1, load(queued=10)) == 3
    assert desired_containers(settings, 1, load(queued=1)) == 3


def test_capacity_caps_when_no_max_is_set() -> None:
    assert desired_containers(Autoscaling(), 1, load(queued=10), capacity=4) == 4
    assert desired_containers(Autoscaling(), 1, load(queued=2), capacity=4) == 2


def test_explicit_max_overrides_capacity() -> None:
    assert desired_containers(Autoscaling(max_containers=8), 1, load(queued=10), capacity=4) == 8


def test_min_containers_honoured_above_capacity_and_max() -> None:
    assert desired_containers(Autoscaling(min_containers=6), 1, load(queued=10), capacity=4) == 6
    assert desired_containers(Autoscaling(min_containers=6, max_containers=2), 1, load(queued=10)) == 6


def test_existing_containers_do_not_change_the_target() -> None:
    settings = Autoscaling()
    assert desired_containers(settings, 1, load(queued=2, containers=0)) == desired_containers(
        settings, 1, load(queued=2, containers=7)
    )


def test_busy_container_never_scales_down() -> None:
    clock = FakeClock()
    clock.advance(1e6)
    assert not should_scale_down(Autoscaling(scaledown_window=0), None, clock())


def test_idle_container_scales_down_after_the_whole_window() -> None:
    settings = Autoscaling(scaledown_window=60)
    clock = FakeClock()
    idle_since = clock()
    assert not should_scale_down(settings, idle_since, clock())
    clock.advance(59.5)
    assert not should_scale_down(settings, idle_since, clock())
    clock.advance(0.5)
    assert should_scale_down(settings, idle_since, clock())
    clock.advance(1000)
    assert should_scale_down(settings, idle_since, clock())


def test_zero_window_scales_down_immediately() -> None:
    clock = FakeClock()
    assert should_scale_down(Autoscaling(scaledown_window=0), clock(), clock())


def test_start_fills_the_gap_to_the_desired_count() -> None:
    assert containers_to_start(Autoscaling(), 1, load(queued=3, containers=1)) == 2
    assert containers_to_start(Autoscaling(), 1, load(queued=3, containers=3)) == 0
    assert containers_to_start(Autoscaling(), 1, load(queued=1, containers=4)) == 0


def test_stopping_containers_count_against_max_containers() -> None:
    settings = Autoscaling(max_containers=3)
    # Two containers on their way out (say, single-use ones that ran their input) still exist.
    assert containers_to_start(settings, 1, load(queued=5, containers=0, stopping=2)) == 1
    assert containers_to_start(settings, 1, load(queued=5, containers=1, stopping=2)) == 0


def test_stopping_containers_count_against_capacity() -> None:
    assert containers_to_start(Autoscaling(), 1, load(queued=5, stopping=1), capacity=2) == 1


def test_min_containers_started_even_past_the_limit() -> None:
    settings = Autoscaling(min_containers=2, max_containers=1)
    assert containers_to_start(settings, 1, load()) == 2


def test_the_container_limit_is_max_containers_else_capacity_but_never_below_min() -> None:
    assert container_limit(Autoscaling(), None) is None
    assert container_limit(Autoscaling(), 4) == 4
    assert container_limit(Autoscaling(max_containers=10), 4) == 10
    assert container_limit(Autoscaling(min_containers=5, max_containers=2), 4) == 5


def test_stop_only_the_surplus_and_only_after_the_window() -> None:
    settings = Autoscaling(scaledown_window=10, min_containers=1)
    idle = {"ta-a": 100.0, "ta-b": 95.0, "ta-c": None}  # ta-c is busy
    now_load = load(running=1, containers=3)  # desired: 1 for the busy input (min 1)
    assert containers_to_stop(settings, 1, now_load, idle, now=104.0) == []
    assert containers_to_stop(settings, 1, now_load, idle, now=105.0) == ["ta-b"]
    assert containers_to_stop(settings, 1, now_load, idle, now=110.0) == ["ta-b", "ta-a"]


def test_stop_keeps_min_containers() -> None:
    settings = Autoscaling(scaledown_window=1, min_containers=2)
    idle = {"ta-a": 0.0, "ta-b": 0.0, "ta-c": 0.0}
    assert len(containers_to_stop(settings, 1, load(containers=3), idle, now=100.0)) == 1


def test_stop_nothing_while_demand_needs_them() -> None:
    settings = Autoscaling(scaledown_window=0)
    idle = {"ta-a": 0.0, "ta-b": 0.0}
    assert containers_to_stop(settings, 1, load(queued=2, containers=2), idle, now=100.0) == []


def test_concurrent_containers_scale_by_target_inputs() -> None:
    # 100 inputs, 100 per container: one container, not a hundred.
    assert containers_to_start(Autoscaling(), 100, load(queued=100), capacity=8) == 1
    assert containers_to_start(Autoscaling(), 10, load(queued=100), capacity=8) == 8


def test_inputs_time_out_once_they_have_run_for_the_whole_timeout() -> None:
    started = {"in-a": 0.0, "in-b": 5.0}
    assert timed_out(started, 10, now=9.9) == []
    assert timed_out(started, 10, now=10.0) == ["in-a"]
    assert sorted(timed_out(started, 10, now=20.0)) == ["in-a", "in-b"]


def test_settings_asking_for_absurd_numbers_of_warm_containers_are_refused() -> None:
    from kiln.core.autoscaler import check_settings
    from kiln.errors import InvalidRequest

    check_settings(Autoscaling(min_containers=2, buffer_containers=3, max_containers=10**6))
    for bad in (
        Autoscaling(min_containers=2**31),
        Autoscaling(buffer_containers=5000),
        Autoscaling(min_containers=-1),
        Autoscaling(scaledown_window=float("nan")),
    ):
        with pytest.raises(InvalidRequest):
            check_settings(bad)
