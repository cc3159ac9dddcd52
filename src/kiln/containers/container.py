"""A running container: its process, its output, and its teardown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from kiln.containers.cgroups import Cgroup
from kiln.containers.egress import EgressFilter
from kiln.containers.namespaces import stop_pasta
from kiln.containers.spec import ExitStatus, OutputSink


class Container:
    """Owns one sandbox process. Output goes to `sink`; `wait()` returns how it ended.

    Every Container is reaped: `wait()` collects the process and removes its scratch directory
    (merged root, work dir and, unless the spec named its own, the writable upper); `kill()` ends
    it first (SIGTERM, a grace period, then SIGKILL to the whole session).
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        scratch: Path,
        sink: OutputSink | None,
        cgroup: Cgroup | None = None,
        pasta_pidfile: str = "",
        egress: EgressFilter | None = None,
    ) -> None:
        self.process = process
        # Set when its egress is filtered: its processes lack CAP_NET_RAW, its rules can change.
        self.egress = egress
        self.pasta_pidfile = pasta_pidfile
        self.cgroup = cgroup
        self.scratch = scratch
        self._sink = sink
        self._pumps = [
            asyncio.ensure_future(self._pump(process.stdout, 1)),
            asyncio.ensure_future(self._pump(process.stderr, 2)),
        ]
        self._status: ExitStatus | None = None
        self._waiter: asyncio.Future[ExitStatus] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        """The command's stdin, when its spec asked for a pipe (`ContainerSpec.stdin`)."""
        return self.process.stdin

    async def _pump(self, stream: asyncio.StreamReader | None, fd: int) -> None:
        if stream is None:
            return
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            if self._sink is not None:
                self._sink(fd, chunk)

    async def wait(self) -> ExitStatus:
        """Wait for the process to end and its output to drain; clean up scratch space."""
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._waiter)

    async def _wait(self) -> ExitStatus:
        code = await self.process.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._status = _decode_status(code)
        if self.pasta_pidfile:
            stop_pasta(self.pasta_pidfile)  # the helper does; not if it was SIGKILLed
        if self.cgroup is not None:
            if self.cgroup.oom_killed():
                self._status = ExitStatus(self._status.code, self._status.signal, oom_killed=True)
            self.cgroup.remove()
        await asyncio.to_thread(shutil.rmtree, self.scratch, True)
        return self._status

    async def kill(self, grace: float = 0.0) -> ExitStatus:
        """End the container: SIGTERM, up to `grace` seconds, then SIGKILL its process group."""
        if self.process.returncode is None:
            if grace > 0:
                self._signal(signal.SIGTERM)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.wait()), grace)
            self._signal(signal.SIGKILL)
        return await self.wait()

    def _signal(self, sig: int) -> None:
        # The sandbox runs in its own session; bubblewrap's --die-with-parent takes the rest down.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def _decode_status(code: int) -> ExitStatus:
    # bubblewrap reports a child killed by signal N as exit code 128 + N.
    if code < 0:
        return ExitStatus(code=None, signal=-code)
    if 128 < code <= 128 + 64:
        return ExitStatus(code=None, signal=code - 128)
    return ExitStatus(code=code, signal=None)
