"""Sandboxes: containers created at run time, each owned here from start to end.

A sandbox is one kiln container (the same hardened runtime as functions), not a function pool:
no inputs, no autoscaling. `Sandboxes` starts it, keeps its entrypoint's stdio (output read by
offset, stdin written by offset), runs `exec`s in it (`containers.exec`: the container's own
confinement), enforces `timeout` and `idle_timeout`, ends it on `terminate`, when its app stops
or when the server shuts down, and journals it: its record is written before its ID is returned
and its end as it ends. A sandbox never outlives its server (its container dies with it); after
a restart its record says so, and `result` tells the client why it is gone.

Its records and the decisions about it (when it expires, what its end is called, which ended
ones stop keeping their output) are in `sandbox_records.py`, pure, with the clock passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kiln.containers import Container, ContainerSpec, ExitStatus
from kiln.containers.exec import ExecProcess, ExecServer, ExecSpec
from kiln.core import sandbox_mounts
from kiln.core.functions import Resources
from kiln.core.placement import Placement, Placer
from kiln.core.results import Status
from kiln.core.sandbox_mounts import ImageMount
from kiln.core.sandbox_records import (
    SandboxFinished,
    SandboxInfo,
    SandboxNameTaken,
    SandboxResult,
    expired,
    info_from_row,
    new_ids,
    result_of,
    tags_match,
    to_forget,
)
from kiln.core.stdio import OutputLog, StdinPipe, Terminal
from kiln.errors import ContainerStartError, InvalidRequest, KilnError, NotFound, SandboxUnavailable
from kiln.storage.state import StateStore

log = logging.getLogger("kiln.sandboxes")

RESTARTED = (
    "this sandbox ended when the kiln server restarted (a sandbox's container does not outlive "
    "its server); create a new one"
)
# An ended sandbox's output (and its execs') stays readable this long, for this many sandboxes;
# its record stays in the journal.
KEEP_ENDED_SECONDS = 600.0
KEEP_ENDED_COUNT = 100
# A finished exec's output stays readable this long (a sandbox may run thousands).
KEEP_EXEC_SECONDS = 300.0
_EXEC_BUFFER = 8 << 20  # unread output an exec may have before it waits for its reader
# What a sandbox whose entrypoint runs on a terminal runs as its container's command: the
# entrypoint itself is started beside it on a terminal of the sandbox's own (as a pty exec is).
_HOLD = ["sleep", "2147483647"]


class SandboxRuntime(Protocol):
    """What sandboxes need of a runtime: containers that take an `exec`."""

    async def start(
        self, spec: ContainerSpec, sink: Callable[[int, bytes], None] | None = None
    ) -> Container: ...


# --- live sandboxes


@dataclass
class Exec:
    """One command run in a sandbox."""

    exec_id: str
    process: ExecProcess
    stdout: OutputLog
    stderr: OutputLog
    stdin: StdinPipe
    returncode: int | None = None
    terminal: int | None = None  # a pty exec's master side (its output is stdout)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)  # what pumps its stdio


@dataclass
class Sandbox(SandboxInfo):
    """A sandbox of this server's life: its container, stdio and execs."""

    env: dict[str, str]
    workdir: str
    container: Container | None = None
    stdout: OutputLog = field(default_factory=OutputLog)
    stderr: OutputLog = field(default_factory=OutputLog)
    stdin: StdinPipe = field(default_factory=lambda: StdinPipe(None))
    execs: dict[str, Exec] = field(default_factory=dict)
    # What says it is ready (`wait_ready`): a command to run in it, or a port of its own to accept.
    ready_command: list[str] = field(default_factory=list)
    ready_port: int = 0
    ready_interval: float = 0.1
    placement: Placement = field(default_factory=Placement)  # the GPUs it holds
    # An entrypoint on a terminal (`pty`): its process, and its terminal's pump.
    entrypoint: ExecProcess | None = None
    terminal_closed: asyncio.Future[None] | None = None
    # Started beside the container (execs are what sandboxes are for), awaited by the first exec.
    exec_server: asyncio.Future[ExecServer] | None = None
    exec_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What the frontend added around it (TLS in front of its ports), closed when it ends.
    secure_tunnels: dict[int, int] = field(default_factory=dict)  # container port → TLS port
    raw_ports: set[int] = field(default_factory=set)  # ports whose plain TCP view is offered too
    on_end: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    mounts: dict[str, ImageMount] = field(default_factory=dict)  # path → an image mounted there
    # `verbose=True`: what is done to it (created, each exec) goes to its app's logs.
    narrate: Callable[[str], None] | None = None
    ended_by: str = ""
    ended_at: float = 0.0  # monotonic
    last_active: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.result is None

    def touch(self) -> None:
        self.last_active = time.monotonic()


class Sandboxes:
    """Every sandbox of this server: the live ones, and the journal of all."""

    def __init__(
        self, state: StateStore, monotonic: Callable[[], float] = time.monotonic, placer: Placer | None = None
    ) -> None:
        self._state = state
        self._placer = placer or Placer()
        self._stopping: set[asyncio.Task[None]] = set()
        self._live: dict[str, Sandbox] = {}
        self._by_task: dict[str, str] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._monotonic = monotonic

    def restore(self) -> None:
        """The sandboxes of a server that stopped ended with it."""
        self._state.execute(
            "UPDATE sandboxes SET ended_at = ?, result = ? WHERE ended_at = 0",
            (time.time(), SandboxResult(Status.TERMINATED, 137, RESTARTED).to_json()),
        )

    def expire(self, before: float) -> None:
        """Forget the records of sandboxes that ended before `before` (wall-clock time)."""
        self._state.execute("DELETE FROM sandboxes WHERE ended_at > 0 AND ended_at < ?", (before,))

    async def create(
        self,
        runtime: SandboxRuntime,
        spec: ContainerSpec,
        *,
        app_id: str,
        environment: str,
        name: str = "",
        tags: dict[str, str] | None = None,
        timeout: float = 300.0,
        idle_timeout: float = 0.0,
        image_id: str = "",
        tunnels: dict[int, int] | None = None,
        sink: Callable[[int, bytes], None] | None = None,
        ready_command: list[str] | None = None,
        ready_port: int = 0,
        ready_interval: float = 0.1,
        resources: Resources | None = None,
        pty: tuple[int, int] | None = None,
        v1_ids: bool = False,
    ) -> Sandbox:
        """Start a sandbox. `resources`: the GPUs to place it on (held until it ends); `pty`:
        (rows, cols) of a terminal its entrypoint runs on, which is then its stdin and stdout;
        `v1_ids`: IDs of the client's V1 shape, so the client drives it (and later handles to
        it) over the V1 protocol it was created with."""
        if name and any(s.name == name and s.app_id == app_id and s.running for s in self._live.values()):
            raise SandboxNameTaken(
                f"a running sandbox named {name!r} already exists in this app; terminate it or choose another name"
            )
        sandbox_id, task_id = new_ids(v1_ids)
        sandbox = Sandbox(
            sandbox_id=sandbox_id,
            task_id=task_id,
            app_id=app_id,
            environment=environment,
            name=name,
            tags=dict(tags or {}),
            created_at=time.time(),
            timeout=timeout,
            idle_timeout=idle_timeout,
            env=dict(spec.env),
            workdir=spec.cwd,
            image_id=image_id,
            tunnels=dict(tunnels or {}),
            result=None,
            finished_at=0.0,
            ready_command=list(ready_command or []),
            ready_port=ready_port,
            ready_interval=ready_interval,
        )
        self._write(sandbox)

        def output(fd: int, data: bytes) -> None:
            (sandbox.stdout if fd == 1 else sandbox.stderr).append(data)
            if sink is not None:
                sink(fd, data)

        entrypoint = ExecSpec(list(spec.argv), dict(spec.env), spec.cwd, pty=True) if pty else None
        if entrypoint is not None:
            spec.argv = list(_HOLD)
        spec.stdin = entrypoint is None
        try:
            sandbox.placement = self._placer.place(resources or Resources())
            spec.gpus = list(sandbox.placement.gpus)
            container = await runtime.start(spec, output)
        except KilnError as exc:
            self._placer.release(sandbox.placement)
            self._end(sandbox, SandboxResult(Status.INIT_FAILURE, 1, str(exc)))
            raise
        sandbox.container = container
        sandbox.exec_server = _exec_server(container)
        sandbox.stdin = StdinPipe(container.stdin)
        if entrypoint is not None and pty is not None:
            try:
                await self._start_on_terminal(sandbox, entrypoint, pty, lambda data: output(1, data))
            except BaseException as exc:
                await container.kill()
                await _close_exec_server(sandbox)
                self._placer.release(sandbox.placement)
                self._end(sandbox, SandboxResult(Status.INIT_FAILURE, 1, str(exc)))
                raise
        sandbox.started = sandbox.last_active = self._monotonic()
        self._live[sandbox.sandbox_id] = sandbox
        self._by_task[sandbox.task_id] = sandbox.sandbox_id
        self._watchers[sandbox.sandbox_id] = asyncio.ensure_future(self._watch(sandbox))
        return sandbox

    async def _start_on_terminal(
        self, sandbox: Sandbox, entrypoint: ExecSpec, window: tuple[int, int], output: Callable[[bytes], None]
    ) -> None:
        """Run the entrypoint as a pty exec runs: on a terminal of the sandbox's own devpts,
        under exactly the sandbox's confinement."""
        assert sandbox.exec_server is not None
        server = await asyncio.shield(sandbox.exec_server)
        process = await server.run(entrypoint)
        if process.terminal is None:
            process.kill()
            raise ContainerStartError(
                f"could not open a terminal for the sandbox's entrypoint {entrypoint.argv[0]!r}"
            )
        terminal = Terminal(process.terminal, output, *window)
        sandbox.entrypoint = process
        sandbox.stdin = StdinPipe(terminal)
        sandbox.terminal_closed = asyncio.ensure_future(terminal.closed_after(process.wait()))

    async def _watch(self, sandbox: Sandbox) -> None:
        """Wait for the sandbox to end, ending it first if it expires (or, for an entrypoint on
        a terminal, once that has exited: it is what the sandbox runs)."""
        container = sandbox.container
        assert container is not None
        waiter = asyncio.ensure_future(container.wait())
        entrypoint = sandbox.entrypoint
        entry_exit: ExitStatus | None = None
        watched = [waiter] + ([asyncio.ensure_future(entrypoint.wait())] if entrypoint else [])
        while not waiter.done():
            if entrypoint is not None and entrypoint.returncode is not None and not sandbox.ended_by:
                code = entrypoint.returncode
                entry_exit = ExitStatus(code=None, signal=-code) if code < 0 else ExitStatus(code, None)
                if sandbox.terminal_closed is not None:
                    await asyncio.shield(sandbox.terminal_closed)
                await container.kill()
                break
            busy = any(e.returncode is None for e in sandbox.execs.values())
            reason = expired(
                self._monotonic(),
                sandbox.started,
                sandbox.timeout,
                sandbox.last_active,
                sandbox.idle_timeout,
                busy,
            )
            if reason:
                sandbox.ended_by = sandbox.ended_by or reason
                await container.kill()
                break
            await asyncio.wait(watched, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        exit = await waiter
        if entry_exit is not None and not sandbox.ended_by:
            exit = entry_exit
        if sandbox.terminal_closed is not None:
            with contextlib.suppress(Exception):
                await sandbox.terminal_closed
        self._placer.release(sandbox.placement)
        await _close_exec_server(sandbox)
        sandbox.stdout.close()
        sandbox.stderr.close()
        sandbox.stdin.close()
        for close in sandbox.on_end:
            with contextlib.suppress(Exception):
                await close()
        for mounted in sandbox.mounts.values():
            sandbox_mounts.release(mounted)
        self._end(sandbox, result_of(exit, sandbox.ended_by, sandbox.timeout, sandbox.idle_timeout))

    def _end(self, sandbox: Sandbox, result: SandboxResult) -> None:
        if sandbox.narrate is not None:  # before its end time: a container's logs stop there
            sandbox.narrate(
                f"ended: exit code {result.exitcode}{f' ({result.message})' if result.message else ''}"
            )
        sandbox.result = result
        sandbox.finished_at = time.time()
        self._state.execute(
            "UPDATE sandboxes SET ended_at = ?, result = ? WHERE id = ?",
            (sandbox.finished_at, result.to_json(), sandbox.sandbox_id),
        )
        sandbox.ended_at = self._monotonic()
        sandbox.ended.set()
        ended = [(s.sandbox_id, s.ended_at) for s in self._live.values() if s.result is not None]
        for sandbox_id in to_forget(ended, self._monotonic(), KEEP_ENDED_SECONDS, KEEP_ENDED_COUNT):
            self._forget(sandbox_id)

    def _forget(self, sandbox_id: str) -> None:
        forgotten = self._live.pop(sandbox_id, None)
        if forgotten is not None:
            self._by_task.pop(forgotten.task_id, None)
            self._watchers.pop(sandbox_id, None)

    def _write(self, sandbox: Sandbox) -> None:
        data = {
            "tags": sandbox.tags,
            "image_id": sandbox.image_id,
            "timeout": sandbox.timeout,
            "idle_timeout": sandbox.idle_timeout,
            "tunnels": {str(k): v for k, v in sandbox.tunnels.items()},
        }
        self._state.execute(
            "INSERT INTO sandboxes (id, app_id, environment, name, task_id, data, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            (
                sandbox.sandbox_id,
                sandbox.app_id,
                sandbox.environment,
                sandbox.name or None,
                sandbox.task_id,
                json.dumps(data),
                sandbox.created_at,
            ),
        )

    # --- lookups

    def live(self, sandbox_id: str) -> Sandbox:
        """A sandbox of this server's life; NotFound (saying why) otherwise."""
        sandbox = self._live.get(sandbox_id)
        if sandbox is not None:
            return sandbox
        info = self.info(sandbox_id)
        if info.result is not None and info.result.message == RESTARTED:
            raise NotFound(RESTARTED)
        raise NotFound(f"sandbox {sandbox_id} has ended and its output is no longer kept")

    def by_task(self, task_id: str) -> Sandbox:
        sandbox_id = self._by_task.get(task_id)
        if sandbox_id is None:
            rows = self._state.query("SELECT id FROM sandboxes WHERE task_id = ?", (task_id,))
            if not rows:
                raise NotFound(f"no sandbox runs as task {task_id}")
            return self.live(rows[0][0])
        return self._live[sandbox_id]

    def info_by_task(self, task_id: str) -> SandboxInfo:
        """The sandbox that runs (or ran) as task `task_id`, live or from the journal."""
        sandbox_id = self._by_task.get(task_id)
        if sandbox_id is not None:
            return _info_of(self._live[sandbox_id])
        rows = self._state.query(_SELECT + " WHERE task_id = ?", (task_id,))
        if not rows:
            raise NotFound(f"no sandbox runs as task {task_id}")
        return info_from_row(rows[0])

    def info(self, sandbox_id: str) -> SandboxInfo:
        sandbox = self._live.get(sandbox_id)
        if sandbox is not None:
            return _info_of(sandbox)
        rows = self._state.query(_SELECT + " WHERE id = ?", (sandbox_id,))
        if not rows:
            raise NotFound(f"no sandbox has the ID {sandbox_id}")
        return info_from_row(rows[0])

    def list(
        self, app_id: str = "", environment: str | None = None, tags: dict[str, str] | None = None,
        before: float = 0.0, include_finished: bool = False, limit: int = 100,
    ) -> list[SandboxInfo]:  # fmt: skip
        """Newest first, created strictly before `before` (0: now)."""
        where: list[str] = ["created_at < ?"]
        params: list[object] = [before or time.time() + 1]
        if app_id:
            where.append("app_id = ?")
            params.append(app_id)
        elif environment is not None:
            where.append("environment = ?")
            params.append(environment)
        if not include_finished:
            where.append("ended_at = 0")
        rows = self._state.query(
            _SELECT + " WHERE " + " AND ".join(where) + " ORDER BY created_at DESC", params
        )
        found = []
        for row in rows:
            info = self.info(row[0]) if row[0] in self._live else info_from_row(row)
            if tags_match(info.tags, tags or {}):
                found.append(info)
                if len(found) >= limit:
                    break
        return found

    def by_name(self, app_id: str, name: str, include_terminated: bool = False) -> SandboxInfo:
        for sandbox in self._live.values():
            if sandbox.app_id == app_id and sandbox.name == name and sandbox.running:
                return _info_of(sandbox)
        if include_terminated:
            rows = self._state.query(
                _SELECT + " WHERE app_id = ? AND name = ? ORDER BY created_at DESC LIMIT 1", (app_id, name)
            )
            if rows:
                return info_from_row(rows[0])
        raise NotFound(f"no running sandbox is named {name!r} in this app")

    def set_tags(self, sandbox_id: str, tags: dict[str, str]) -> None:
        sandbox = self._live.get(sandbox_id)
        if sandbox is None:
            self.info(sandbox_id)  # NotFound if unknown
            raise InvalidRequest("the sandbox has ended: its tags can no longer change")
        sandbox.tags = dict(tags)
        self._write(sandbox)

    # --- waiting and ending

    async def wait(self, sandbox_id: str, timeout: float) -> SandboxResult | None:
        """Its result, waiting up to `timeout` seconds for it to end; None if it still runs."""
        sandbox = self._live.get(sandbox_id)
        if sandbox is None:
            return self.info(sandbox_id).result
        if sandbox.result is None and timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sandbox.ended.wait(), timeout)
        return sandbox.result

    async def terminate(self, sandbox_id: str, reason: str = "terminated") -> None:
        sandbox = self._live.get(sandbox_id)
        if sandbox is None:
            self.info(sandbox_id)
            return
        if sandbox.result is None and sandbox.container is not None:
            sandbox.ended_by = sandbox.ended_by or reason
            await sandbox.container.kill(grace=0.0)
            await sandbox.ended.wait()

    def stop(self, task_id: str) -> bool:
        """Begin ending the running sandbox of task `task_id` (`modal container stop`); False
        if no sandbox runs as that task."""
        sandbox = self._live.get(self._by_task.get(task_id, ""))
        if sandbox is None or not sandbox.running:
            return False
        stopping = asyncio.ensure_future(
            self.terminate(sandbox.sandbox_id, "the sandbox's container was stopped (modal container stop)")
        )
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        return True

    async def stop_app(self, app_id: str) -> None:
        """An app's sandboxes end with it (as on Modal)."""
        ended = [s for s in self._live.values() if s.app_id == app_id and s.running]
        await asyncio.gather(*(self.terminate(s.sandbox_id, "the sandbox's app was stopped") for s in ended))

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(
                self.terminate(s.sandbox_id, "the kiln server shut down")
                for s in self._live.values()
                if s.running
            )
        )
        for watcher in self._watchers.values():
            watcher.cancel()

    # --- snapshots

    @contextlib.asynccontextmanager
    async def paused(self, task_id: str) -> AsyncIterator[Path]:
        """The sandbox's writable layer (its overlay upper directory), with every process of the
        sandbox stopped (SIGSTOP) and no exec starting until the block ends: whoever reads it as
        root (a snapshot's copy) sees a tree nobody changes under it."""
        sandbox = self.by_task(task_id)
        container = sandbox.container
        if container is None or sandbox.result is not None:
            raise SandboxFinished("the sandbox has finished: snapshot a running sandbox")
        if container.cgroup is None:  # its processes could not all be found, so not all stopped
            raise SandboxUnavailable(
                "snapshots need the sandbox in a cgroup of its own, which this machine could not give "
                "it (no usable cpu, memory or pids controller: the kiln server's log says why)"
            )
        async with sandbox.exec_lock:
            stopped = await asyncio.to_thread(_stop_all, container.cgroup.procs_files)
            try:
                yield container.scratch / "upper"
            finally:
                for pid in stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

    async def snapshot_directory(self, task_id: str, path: str, target: Path) -> None:
        """Copy the sandbox's directory `path` (resolved inside it) into the empty directory
        `target`, with every process of the sandbox stopped meanwhile."""
        _, container, server = await self._running(task_id, "snapshot a directory of")
        async with self.paused(task_id):
            await sandbox_mounts.copy_directory(server, container, path, target)

    async def mount_image(self, task_id: str, path: str, layers: Sequence[Path]) -> None:
        """Mount the image of `layers` (topmost first; none: empty) at the sandbox's `path`."""
        sandbox, container, server = await self._running(task_id, "mount an image in")
        async with sandbox.exec_lock:  # one mount change at a time, and none during a snapshot
            await sandbox_mounts.mount(server, container, sandbox.mounts, path, [*layers])

    async def unmount_image(self, task_id: str, path: str) -> None:
        sandbox, _, server = await self._running(task_id, "unmount an image of")
        async with sandbox.exec_lock:
            await sandbox_mounts.unmount(server, sandbox.mounts, path)

    async def _running(self, task_id: str, what: str) -> tuple[Sandbox, Container, ExecServer]:
        """The running sandbox, its container and its exec server (started with the container)."""
        sandbox = self.by_task(task_id)
        if sandbox.result is not None or sandbox.container is None or sandbox.exec_server is None:
            raise SandboxFinished(f"the sandbox has finished: {what} a running sandbox")
        return sandbox, sandbox.container, await asyncio.shield(sandbox.exec_server)

    # --- egress

    async def set_egress(self, task_id: str, allowlist: tuple[str, ...] | None) -> None:
        """Replace a running sandbox's egress rules: only the networks of `allowlist` (None: any).
        Only a sandbox created with an allowlist has rules to replace (see `containers/egress.py`)."""
        _, container, server = await self._running(task_id, "change the egress of")
        if container.egress is None:
            raise InvalidRequest(
                "only a sandbox created with an outbound CIDR allowlist can change its egress later: one "
                "created with open egress keeps CAP_NET_RAW, whose packet sockets pass any filter, and "
                "one created with block_network=True has no network. Create the sandbox with "
                "outbound_cidr_allowlist=[...] (an empty list for no egress yet)"
            )
        await server.netfilter(container.egress.nft, container.egress.ruleset(allowlist))

    # --- exec

    async def exec(
        self,
        task_id: str,
        exec_id: str,
        spec: ExecSpec,
        timeout: float = 0.0,
        window: tuple[int, int] = (0, 0),
    ) -> Exec:
        """Run `spec` in the sandbox (once per `exec_id`); a pty exec's terminal, of `window`
        (rows, cols), is its stdout and its stdin."""
        existing = self.by_task(task_id).execs.get(exec_id)
        if existing is not None:
            return existing  # the client re-sent its start (same exec ID): it runs once
        sandbox, _, server = await self._running(task_id, "exec in")
        async with sandbox.exec_lock:  # not while a snapshot has the sandbox paused
            if (existing := sandbox.execs.get(exec_id)) is not None:
                return existing  # re-sent while this one waited for the lock
            process = await server.run(spec)
        sandbox.touch()
        output = (OutputLog(_EXEC_BUFFER, backpressure=True), OutputLog(_EXEC_BUFFER, backpressure=True))
        run = Exec(exec_id, process, *output, StdinPipe(process.stdin), terminal=process.terminal)
        if process.terminal is not None:
            terminal = Terminal(process.terminal, run.stdout.append, *window)
            run.stdin = StdinPipe(terminal)
            run.tasks.append(asyncio.ensure_future(_close_after(terminal, process, run.stdout)))
        sandbox.execs[exec_id] = run
        run.tasks.append(asyncio.ensure_future(self._pump_exec(sandbox, run, timeout, terminal=spec.pty)))
        return run

    async def wait_ready(self, task_id: str, timeout: float) -> bool:
        """Whether the sandbox's readiness probe succeeds within `timeout` seconds (a sandbox
        without one is ready once it runs)."""
        deadline = self._monotonic() + timeout
        while True:
            sandbox, _, server = await self._running(task_id, "wait for")
            if not sandbox.ready_command and not sandbox.ready_port:
                return True
            if sandbox.ready_port:
                spec = ExecSpec(["probe", json.dumps({"TcpConnect": sandbox.ready_port})], tool="probes")
            else:
                spec = ExecSpec(list(sandbox.ready_command), env=dict(sandbox.env), cwd=sandbox.workdir)
            spec.stdout = spec.stderr = "devnull"
            async with sandbox.exec_lock:  # a probe runs the sandbox's code: not while it is paused
                probe = await server.run(spec)
            if probe.stdin is not None:
                probe.stdin.close()
            if await probe.wait() == 0:
                return True
            if self._monotonic() + sandbox.ready_interval > deadline:
                return False
            await asyncio.sleep(sandbox.ready_interval)

    async def _pump_exec(self, sandbox: Sandbox, run: Exec, timeout: float, terminal: bool) -> None:
        process = run.process

        async def pump(stream: asyncio.StreamReader | None, log: OutputLog) -> None:
            if stream is not None:
                while chunk := await stream.read(65536):
                    await log.room()
                    log.append(chunk)
                log.close()

        pumps = asyncio.gather(pump(process.stdout, run.stdout), pump(process.stderr, run.stderr))
        try:
            await asyncio.wait_for(process.wait(), timeout if timeout > 0 else None)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        finally:
            with contextlib.suppress(Exception):
                await pumps
            if not terminal:  # a terminal's reader closes stdout once it has read the last output
                run.stdout.close()
            run.stderr.close()
            run.stdin.close()
            run.returncode = process.returncode
            sandbox.touch()
            run.done.set()
            asyncio.get_running_loop().call_later(KEEP_EXEC_SECONDS, sandbox.execs.pop, run.exec_id, None)


async def _close_exec_server(sandbox: Sandbox) -> None:
    starting = sandbox.exec_server
    if starting is not None:
        starting.cancel()
        if starting.done() and not starting.cancelled() and not starting.exception():
            await starting.result().close()


async def _close_after(terminal: Terminal, process: ExecProcess, output: OutputLog) -> None:
    await terminal.closed_after(process.wait())
    output.close()


def _stop_all(procs_files: list[str]) -> list[int]:
    """SIGSTOP every process of a container's cgroups until none is left running (a process
    may fork while the others are being stopped); the pids stopped."""
    stopped: set[int] = set()
    for _ in range(100):
        pids = set()
        for procs in procs_files:
            with contextlib.suppress(OSError), open(procs) as f:
                pids |= {int(line) for line in f if line.strip()}
        running = [pid for pid in pids if pid not in stopped or _state(pid) not in ("T", "t", "Z", "X", "")]
        if not running:
            break
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
        time.sleep(0.002)
    else:  # still forking after 100 rounds: give up rather than copy a tree that changes
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        raise SandboxUnavailable("the sandbox's processes kept forking while it was being paused; try again")
    return sorted(stopped)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rfind(b")") + 2 :][:1].decode()


def _exec_server(container: Container) -> asyncio.Future[ExecServer]:
    starting = asyncio.ensure_future(ExecServer.start(container))
    # A sandbox whose entrypoint ends at once has no exec server; its execs say so themselves.
    starting.add_done_callback(lambda f: f.cancelled() or f.exception())
    return starting


_SELECT = "SELECT id, task_id, app_id, environment, name, data, created_at, result, ended_at FROM sandboxes"


def _info_of(sandbox: Sandbox) -> SandboxInfo:
    return sandbox
