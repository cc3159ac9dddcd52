"""Schedules of deployed apps: `modal.Period` runs by itself; `modal.Cron` is accepted (its
timing is unit-tested in tests/unit/test_schedules.py)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def test_a_deployed_period_schedule_runs_by_itself_until_the_app_stops(kiln: KilnServer) -> None:
    deployed = run_modal(kiln, "deploy", "scheduled_app.py")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        ticks = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ticks < 3:
            time.sleep(2)
            logs = run_modal(kiln, "app", "logs", "kiln-test-scheduled", timeout=60)
            ticks = logs.stdout.count("KILN-TICK")
        assert ticks >= 3, logs.stdout + logs.stderr
    finally:
        stopped = run_modal(kiln, "app", "stop", "--yes", "kiln-test-scheduled")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    time.sleep(3)
    after_stop = run_modal(kiln, "app", "logs", "kiln-test-scheduled").stdout.count("KILN-TICK")
    time.sleep(4)
    assert run_modal(kiln, "app", "logs", "kiln-test-scheduled").stdout.count("KILN-TICK") == after_stop
