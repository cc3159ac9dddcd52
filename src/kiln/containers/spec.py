"""What a container is: the data a runtime needs to start one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Receives (file descriptor 1 or 2, bytes) as the container writes them.
OutputSink = Callable[[int, bytes], None]


# Stores a layer can come from. Image layers merge into the root filesystem; mount layers merge
# too, and every path they provide is then bound again read-only.
IMAGE, MOUNT, DEPS = "image", "mount", "deps"
MOUNT_STORES = frozenset({MOUNT, DEPS})


@dataclass(frozen=True)
class Layer:
    """A read-only layer, named by its content key in one of a machine's stores."""

    store: str  # IMAGE, MOUNT or DEPS
    key: str

    @property
    def is_mount(self) -> bool:
        return self.store in MOUNT_STORES


@dataclass(frozen=True)
class Bind:
    """A host path made visible at `target` inside the container."""

    source: Path
    target: str
    read_only: bool = True
    # False for a directory a container may have written (a volume's sub_path): the source is
    # opened one component at a time, refusing links, and that very directory is bound, so a link
    # a container swapped in cannot make the bind show another directory of the host.
    follow_links: bool = True


@dataclass(frozen=True)
class PortForward:
    """A port inside the container reachable at `127.0.0.1:host_port` on the host."""

    host_port: int
    container_port: int


@dataclass
class ContainerSpec:
    """A sandboxed process over an overlay of read-only layers.

    `image` and `mounts` are layers by content key, topmost first (mounts lie above the image).
    Writes go to `upper` when given (an image build on this machine keeps it as the new layer),
    otherwise to a private directory removed at exit. `binds` are host paths the runtime's own
    machine provides (a container's socket directory, a build's context).
    """

    image: list[Layer]
    argv: list[str]
    mounts: list[Layer] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    binds: list[Bind] = field(default_factory=list)
    upper: Path | None = None
    network: bool = True  # False: no network at all (only the container's own loopback)
    # With `network`: the only networks (canonical CIDRs, `egress.parse_allowlist`) the container
    # may open connections to, besides DNS to the host's resolvers; None: any. See `egress.py`.
    egress_allowlist: tuple[str, ...] | None = None
    forwards: list[PortForward] = field(default_factory=list)  # host loopback → container ports
    # Ports of the host's loopback the container may reach at its own 127.0.0.1 (kiln's blob
    # server, whose URLs are signed); nothing else on the host's loopback is reachable.
    host_ports: list[int] = field(default_factory=list)
    hostname: str = "kiln"
    # Limits enforced with cgroups where the kernel allows; 0 = unlimited.
    cpu_limit: float = 0.0  # cores
    memory_limit_mb: int = 0  # 0 = the runtime's default ceiling
    gpus: list[int] = field(default_factory=list)  # indices of this machine's GPUs (placement chose them)
    stdin: bool = False  # a pipe to the command's stdin (`Container.stdin`); else /dev/null

    @property
    def layers(self) -> list[Layer]:
        """Every lower layer, topmost first."""
        return [*self.mounts, *self.image]


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
