"""Scaling decisions: pure functions of the settings, the load and the clock."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from kiln.core.functions import Autoscaling
from kiln.errors import InvalidRequest

# Containers one function may keep warm (min + buffer). A bound, not a policy: one request must
# not make the server start millions of containers in one pass of its loop.
MAX_WARM_CONTAINERS = 1000


@dataclass(frozen=True)
class Load:
    queued: int  # inputs waiting for a container
    running: int  # inputs being run by containers that keep serving
    containers: int  # containers alive or starting that keep serving
    stopping: int = 0  # containers told to stop that have not exited yet


def check_settings(settings: Autoscaling) -> None:
    """Refuse settings no machine can honour (a number of warm containers past any sense)."""
    for name in ("min_containers", "buffer_containers", "max_containers"):
        value = getattr(settings, name)
        if value is not None and value < 0:
            raise InvalidRequest(f"{name}={value} must not be negative")
    if settings.min_containers + settings.buffer_containers > MAX_WARM_CONTAINERS:
        raise InvalidRequest(
            f"min_containers={settings.min_containers} and buffer_containers={settings.buffer_containers} "
            f"ask for more than {MAX_WARM_CONTAINERS} warm containers; lower them"
        )
    if not 0 <= settings.scaledown_window <= 7 * 86400:
        raise InvalidRequest(f"scaledown_window={settings.scaledown_window} must be between 0 s and 7 days")


def desired_containers(
    settings: Autoscaling, target_inputs: int, load: Load, capacity: int | None = None
) -> int:
    """How many containers should exist for this load (before scale-down delays).

    `capacity` is what the backend can place for one function (the local machine: its cores);
    an explicit `max_containers` overrides it, `min_containers` is always honoured.
    """
    demand = load.queued + load.running
    wanted = math.ceil(demand / max(1, target_inputs))
    if demand:
        wanted += settings.buffer_containers
    limit = container_limit(settings, capacity)
    if limit is not None:
        wanted = min(wanted, limit)
    return max(wanted, settings.min_containers)


def container_limit(settings: Autoscaling, capacity: int | None) -> int | None:
    """The most containers of one function that may exist at once, stopping ones included."""
    limit = settings.max_containers if settings.max_containers is not None else capacity
    return None if limit is None else max(limit, settings.min_containers)


def containers_to_start(
    settings: Autoscaling, target_inputs: int, load: Load, capacity: int | None = None
) -> int:
    """How many containers to start now: up to the desired count, but never past the limit,
    counting the containers that are still on their way out."""
    missing = desired_containers(settings, target_inputs, load, capacity) - load.containers
    limit = container_limit(settings, capacity)
    if limit is not None:
        missing = min(missing, limit - load.containers - load.stopping)
    return max(0, missing)


def should_scale_down(settings: Autoscaling, idle_since: float | None, now: float) -> bool:
    """An idle container stops once it has been idle for the whole scale-down window."""
    return idle_since is not None and now - idle_since >= settings.scaledown_window


def containers_to_stop(
    settings: Autoscaling,
    target_inputs: int,
    load: Load,
    idle_since: Mapping[str, float | None],
    now: float,
    capacity: int | None = None,
) -> list[str]:
    """Which containers (keys of `idle_since`, None = busy) to stop: only the surplus over the
    desired count, only those idle for the whole window, the longest idle first."""
    surplus = load.containers - desired_containers(settings, target_inputs, load, capacity)
    idle = sorted(
        (since, key)
        for key, since in idle_since.items()
        if since is not None and should_scale_down(settings, since, now)
    )
    return [key for _, key in idle[: max(0, surplus)]]


def timed_out(started: Mapping[str, float], limit: float, now: float) -> list[str]:
    """The inputs (keys of `started`: when each began) that have run for `limit` seconds."""
    return [key for key, since in started.items() if now - since >= limit]
