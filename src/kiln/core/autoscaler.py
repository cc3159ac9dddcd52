"""Scaling decisions: pure functions of the settings, the load and the clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.core.functions import Autoscaling


@dataclass(frozen=True)
class Load:
    queued: int  # inputs waiting for a container
    running: int  # inputs being run
    containers: int  # containers alive or starting


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
    if settings.max_containers is not None:
        wanted = min(wanted, settings.max_containers)
    elif capacity is not None:
        wanted = min(wanted, capacity)
    return max(wanted, settings.min_containers)


def should_scale_down(settings: Autoscaling, idle_since: float | None, now: float) -> bool:
    """An idle container stops once it has been idle for the whole scale-down window."""
    return idle_since is not None and now - idle_since >= settings.scaledown_window
