"""Schedules: when a deployed function runs by itself. Pure decisions over datetimes.

Two kinds, as Modal has them: a cron expression in a time zone (runs at the same wall-clock times
whatever the deploys), and a period counted from the deployment (a redeploy resets it), with
calendar arithmetic for months and years. A server that was down when a run was due does not
make up for it: the next run is the next due time after now.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from kiln.errors import InvalidRequest


@dataclass(frozen=True)
class Period:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: float = 0.0

    def after(self, start: datetime, times: int) -> datetime:
        """`start` plus `times` periods (months and years by the calendar, clamped to month ends)."""
        months = (self.years * 12 + self.months) * times
        moved = _add_months(start, months) if months else start
        fixed = timedelta(
            weeks=self.weeks, days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds
        )
        return moved + fixed * times


@dataclass(frozen=True)
class Schedule:
    cron: str = ""
    timezone: str = "UTC"
    period: Period | None = None

    def check(self) -> None:
        """Raise InvalidRequest, with the fix, for a schedule that can never run."""
        if self.cron:
            try:
                CronSim(self.cron, datetime.now(_zone(self.timezone)))
            except CronSimError as exc:
                raise InvalidRequest(
                    f"modal.Cron({self.cron!r}) is not a valid cron expression ({exc}); "
                    "write five fields: minute hour day-of-month month day-of-week"
                ) from None
        elif self.period is None or self.period.after(_EPOCH, 1) <= _EPOCH:
            raise InvalidRequest("a Period schedule must be longer than zero seconds")


_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def next_run(schedule: Schedule, anchor: float, after: float) -> float:
    """The first run strictly after `after` (Unix seconds). `anchor` is when the function was
    deployed: periods count from it."""
    if schedule.cron:
        zone = _zone(schedule.timezone)
        start = datetime.fromtimestamp(after, zone)
        return next(iter(CronSim(schedule.cron, start))).timestamp()
    assert schedule.period is not None
    period = schedule.period
    # Calendar arithmetic on a datetime, but offsets added to the exact float anchor (a datetime
    # keeps microseconds only, and a rounded anchor would move every run by a hair).
    origin = datetime.fromtimestamp(anchor, timezone.utc)

    def run(times: int) -> float:
        return anchor + (period.after(origin, times) - origin).total_seconds()

    step = max(run(1) - anchor, 1e-3)
    times = max(1, int((after - anchor) // step))  # a guess; calendar periods vary in length
    while times > 1 and run(times - 1) > after:
        times -= 1
    while run(times) <= after:
        times += 1
    return run(times)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'") from None


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
