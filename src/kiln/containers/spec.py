"""What a container is: the data a runtime needs to start one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Receives (file descriptor 1 or 2, bytes) as the container writes them.
OutputSink = Callable[[int, bytes], None]


@dataclass(frozen=True)
class Bind:
    """A host path made visible at `target` inside the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass
class ContainerSpec:
    """A sandboxed process over an overlay of read-only layers.

    `layers` are lower directories, topmost first. Writes go to `upper` when given (an image
    build keeps it as the new layer), otherwise to a private directory removed at exit.
    """

    layers: list[Path]
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    binds: list[Bind] = field(default_factory=list)
    upper: Path | None = None
    network: bool = True
    hostname: str = "kiln"
    # Limits enforced with cgroups where the kernel allows; 0 = unlimited.
    cpu_limit: float = 0.0  # cores
    memory_limit_mb: int = 0
    devices: list[str] = field(default_factory=list)  # host device nodes to expose (GPUs)


@dataclass(frozen=True)
class ExitStatus:
    """How a container ended: an exit code, or the signal that killed it."""

    code: int | None
    signal: int | None
    oom_killed: bool = False  # the kernel killed it for exceeding its memory limit

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.oom_killed:
            return "out of memory: it exceeded its memory limit and the kernel killed it; raise `memory=`"
        if self.signal is not None:
            import signal as _signal

            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit code {self.code}"
