"""The runtime seam: what the core and the image builder need from whatever runs containers.

`BubblewrapRuntime` runs them on this machine; `kiln.testing.InMemoryRuntime` runs nothing and
lets a test decide how each container ends; a cluster backend will offer the same interface on
each of its machines. A spec names its layers by content key, so a runtime resolves them to paths
on its own machine.
"""

from __future__ import annotations

from typing import Protocol

from kiln.containers.idmap import IdMap
from kiln.containers.spec import ContainerSpec, ExitStatus, OutputSink


class ContainerHandle(Protocol):
    """A started container."""

    @property
    def status(self) -> ExitStatus | None:
        """How it ended; None while it runs."""
        ...

    async def wait(self) -> ExitStatus:
        """Wait for it to end (and its output to drain)."""
        ...

    async def kill(self, grace: float = 0.0) -> ExitStatus:
        """End it: SIGTERM, up to `grace` seconds, then SIGKILL."""
        ...


class Runtime(Protocol):
    """Starts containers from specs and streams their output to a sink."""

    # The host ids root inside a container maps to (None: a runtime that maps none). Whoever
    # hands a container a host directory to write in gives it to these ids.
    ids: IdMap | None

    async def start(self, spec: ContainerSpec, sink: OutputSink | None = None) -> ContainerHandle: ...

    async def shutdown(self) -> None:
        """Kill every container this runtime started."""
        ...
