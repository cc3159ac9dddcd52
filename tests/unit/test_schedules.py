"""Schedules: when a deployed function's next run is due (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from kiln.core.schedules import Period, Schedule, next_run
from kiln.errors import InvalidRequest


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: str = "UTC") -> float:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def test_a_period_counts_from_the_deployment() -> None:
    every_hour = Schedule(period=Period(hours=1))
    anchor = ts(2026, 1, 1, 10, 30)
    assert next_run(every_hour, anchor, anchor) == ts(2026, 1, 1, 11, 30)
    assert next_run(every_hour, anchor, ts(2026, 1, 1, 13, 0)) == ts(2026, 1, 1, 13, 30)
    assert next_run(every_hour, anchor, ts(2026, 1, 1, 13, 30)) == ts(2026, 1, 1, 14, 30)  # strictly after


def test_a_monthly_period_follows_the_calendar_and_clamps_to_month_ends() -> None:
    monthly = Schedule(period=Period(months=1))
    anchor = ts(2026, 1, 31, 12, 0)
    assert next_run(monthly, anchor, anchor) == ts(2026, 2, 28, 12, 0)
    assert next_run(monthly, anchor, ts(2026, 3, 1)) == ts(2026, 3, 31, 12, 0)


def test_a_fractional_second_period_works() -> None:
    assert next_run(Schedule(period=Period(seconds=2.5)), 100.0, 101.0) == 102.5


def test_a_cron_runs_at_wall_clock_times_in_its_time_zone() -> None:
    daily_six = Schedule(cron="0 6 * * *", timezone="America/New_York")
    after = ts(2026, 7, 1, 12, 0, tz="UTC")
    expected = datetime(2026, 7, 2, 6, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert next_run(daily_six, anchor=0.0, after=after) == expected
    assert datetime.fromtimestamp(expected, timezone.utc).hour == 10  # EDT is UTC-4


def test_bad_schedules_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidRequest, match="five fields"):
        Schedule(cron="every minute").check()
    with pytest.raises(InvalidRequest, match="time zone"):
        Schedule(cron="* * * * *", timezone="Mars/Olympus").check()
    with pytest.raises(InvalidRequest, match="longer than zero"):
        Schedule(period=Period()).check()
