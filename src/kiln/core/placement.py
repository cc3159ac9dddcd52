"""Placement: which machine and which GPUs a container gets, decided before a runtime is asked.

The core places every container here, so a frontend's launcher only reads the outcome
(`Task.placement`) and a cluster backend can later supply more machines without any frontend
changing. Today there is one machine, this one; its GPUs are detected on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.core import gpus
from kiln.core.functions import Resources
from kiln.core.gpus import GpuDevice
from kiln.errors import ContainerStartError, InvalidRequest

LOCAL = "local"


@dataclass(frozen=True)
class Placement:
    machine: str = LOCAL
    gpus: tuple[int, ...] = ()


@dataclass
class Machine:
    name: str
    gpus: list[GpuDevice]
    gpus_in_use: set[int] = field(default_factory=set)


def gpu_request(resources: Resources) -> tuple[str, int] | None:
    """(type, count) of a GPU request, or None when none is asked for."""
    return (resources.gpu_type, resources.gpu_count or 1) if resources.gpu_type else None


class Placer:
    """The machines' capacity, and the GPUs each container holds."""

    def __init__(self, detect: Callable[[], list[GpuDevice]] = gpus.detect_gpus) -> None:
        self._detect = detect
        self._machine: Machine | None = None

    @property
    def machine(self) -> Machine:
        if self._machine is None:
            self._machine = Machine(LOCAL, self._detect())
        return self._machine

    def servable(self, resources: Resources) -> bool:
        """Whether some machine has GPUs for the request (True when none is asked for)."""
        return self.fit(resources) != 0

    def fit(self, resources: Resources) -> int | None:
        """How many such containers fit at once (None: no GPU asked for, so no GPU limit)."""
        wanted = gpu_request(resources)
        if wanted is None:
            return None
        try:
            gpus.validate(*wanted)
        except InvalidRequest:
            return 0
        return gpus.capacity(*wanted, self.machine.gpus)

    def describe_machines(self) -> str:
        return ", ".join(sorted({d.name for d in self.machine.gpus})) or "no GPU"

    def place(self, resources: Resources) -> Placement:
        """Reserve what a container needs (released with `release`)."""
        wanted = gpu_request(resources)
        if wanted is None:
            return Placement()
        machine = self.machine
        chosen = gpus.choose_devices(*wanted, machine.gpus, machine.gpus_in_use)
        if chosen is None:
            request = gpus.describe(*wanted)
            raise ContainerStartError(f"all GPUs matching gpu={request!r} are in use by other containers")
        machine.gpus_in_use.update(chosen)
        return Placement(machine.name, tuple(chosen))

    def release(self, placement: Placement) -> None:
        self.machine.gpus_in_use.difference_update(placement.gpus)
