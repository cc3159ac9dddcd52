"""fal's BuildEnvironment and Run: a requirement set becomes a cached image; `fal run` becomes an
ephemeral kiln app whose one function is the fal App, served by runners (kiln containers of a
server pool: started on demand, scaled by requests, kept `keep_alive` seconds when idle).

The Run stream carries the app's URLs once, then the runners' output as it comes; it stays open
while the app lives. When the client goes away (Ctrl-C cancels the stream) the app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import isolate_proto as fal_pb
from google.protobuf import json_format

from kiln.auth import is_loopback
from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.errors import ImageBuildError, InvalidRequest, NotFound
from kiln.frontends.fal.environments import FalEnvironment
from kiln.frontends.fal.launcher import FalLauncher
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.fal.secrets import secret_values
from kiln.frontends.modal.dispatch import CallContext
from kiln.ids import new_id
from kiln.images.planner import Recipe
from kiln.streams import STDERR

_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")  # what `--find-links` folders offer
_HEARTBEAT = 5.0  # seconds between the Run stream's heartbeats of its app
_RUNNING = fal_pb.HostedRunStatus(state=fal_pb.HostedRunStatus.State.IN_PROGRESS)
_SUCCESS = fal_pb.HostedRunStatus(state=fal_pb.HostedRunStatus.State.SUCCESS)


class RunHandlers:
    def __init__(self, core: Core, routes: FalRoutes, launcher: FalLauncher) -> None:
        self.core = core
        self.routes = routes
        self.launcher = launcher
        self.images: dict[str, str] = {}  # env_id → image_id, for runs with build_environment=false

    async def BuildEnvironment(
        self, req: fal_pb.BuildEnvironmentRequest, ctx: CallContext
    ) -> AsyncIterator[fal_pb.BuildEnvironmentResult]:
        environment = environment_of(req.environments)
        env_id = environment.env_id
        async for lines in self.build(environment, req.environment_name, allowed_secrets(req)):
            yield fal_pb.BuildEnvironmentResult(env_id=env_id, logs=build_logs(lines))
        yield fal_pb.BuildEnvironmentResult(env_id=env_id, status=_SUCCESS)

    def image_of(self, env_id: str) -> str:
        """The image built for an environment (fal builds first, then runs or deploys)."""
        image_id = self.images.get(env_id)
        if image_id is None:
            raise NotFound(
                f"Pre-built environment not found ({env_id}); build it again (fal run and fal deploy do)"
            )
        return image_id

    async def build(
        self, environment: FalEnvironment, fal_environment: str, allowed: list[str] | None = None
    ) -> AsyncIterator[list[str]]:
        """Build (or find) the environment's image, yielding its build output as it comes. The
        secrets its requirements name are in the build steps' environment only: not in the keys
        (a requirement set keys the same whatever the token), masked in the log."""
        names = sorted(environment.secret_names())
        if allowed is not None and (refused := sorted(set(names) - set(allowed))):
            raise InvalidRequest(f"the requirements use secrets this build may not see: {', '.join(refused)}")
        secrets = secret_values(self.core, fal_environment, names) if names else {}
        run_binds, copies = self._find_links(environment)
        recipe = Recipe(
            dockerfile=environment.dockerfile(),
            force_build=environment.force,
            secret_env=secrets,
            host_ports=environment.loopback_ports(),
            run_binds=run_binds,
        )
        build = self.core.images.request(recipe)
        cursor = 0
        while True:
            entries = await build.logs.read(cursor, 1.0)
            if entries:
                cursor = entries[-1].entry_id
                yield [line for e in entries for line in e.data.splitlines() if line.strip()]
            if build.done.is_set() and not build.logs.after(cursor):
                break
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
        if build.error:
            raise ImageBuildError(f"The environment could not be built: {build.error}")
        self.images[environment.env_id] = build.image_id

    def _find_links(self, environment: FalEnvironment) -> tuple[list[tuple[Path, str]], list[Path]]:
        """Local `--find-links=DIR` folders, for a server on loopback only (a remote client's
        paths name nothing of its own here, and this server reads them as root): the
        distribution archives directly in each folder (regular files, no links followed) are
        copied where the build's unprivileged ids can read them. Returns the binds and the copies
        to remove after the build."""
        local = environment.local_find_links()
        if local and not is_loopback(self.core.config.host):
            raise InvalidRequest(
                "`--find-links=DIR` names a folder on this kiln server, which serves beyond loopback; "
                "serve the wheels over HTTP (--find-links=https://…) instead"
            )
        binds, copies = [], []
        for directory, inside in local.items():
            copy = Path(tempfile.mkdtemp(dir=self.core.images.builder.scratch, prefix="find-links-"))
            os.chmod(copy, 0o755)
            for entry in os.scandir(directory):
                if entry.is_file(follow_symlinks=False) and entry.name.endswith(_ARCHIVES):
                    shutil.copyfile(entry.path, copy / entry.name, follow_symlinks=False)
                    os.chmod(copy / entry.name, 0o644)
            binds.append((copy, inside))
            copies.append(copy)
        return binds, copies

    async def Run(self, req: fal_pb.HostedRun, ctx: CallContext) -> AsyncIterator[fal_pb.HostedRunResult]:
        if req.entrypoint or not req.HasField("function"):
            raise InvalidRequest(
                "kiln runs fal Apps and functions shipped by the client (no entrypoint= runs yet)"
            )
        environment = environment_of(req.environments)
        env_id = environment.env_id
        if req.build_environment or not req.HasField("build_environment"):
            async for lines in self.build(environment, req.environment_name, allowed_secrets(req)):
                yield fal_pb.HostedRunResult(env_id=env_id, logs=build_logs(lines))
        image_id = self.image_of(env_id)
        if not req.machine_requirements.exposed_port:  # a @fal.function call, not an App
            async for result in self._call(req, image_id, env_id):
                yield result
            return
        name = req.application_name or "fal-app"
        app = self.core.create_app(name, AppState.EPHEMERAL, req.environment_name or "main", frontend="fal")
        definition = RunnerDefinition.from_request(name, image_id, req)
        function = definition.function_def(new_id("fu"), app.app_id)
        self.core.register_function(function)
        self.core.publish_app(
            app.app_id, name=name, state=None, function_ids={name: function.function_id}, class_ids={}
        )
        urls = self.routes.add(name, function.function_id, public=definition.public)
        warm: asyncio.Future[None] | None = None
        try:
            yield fal_pb.HostedRunResult(run_id=app.app_id, status=_RUNNING, service_urls=urls, env_id=env_id)
            warm = asyncio.ensure_future(self._warm(function.function_id))
            async for logs in self._logs(app.app_id):
                yield fal_pb.HostedRunResult(run_id=app.app_id, status=_RUNNING, logs=logs)
        finally:
            if warm is not None:  # a Ctrl-C ends the stream here, with the runner maybe still starting
                warm.cancel()
            self.routes.remove(name, function.function_id)
            with contextlib.suppress(NotFound):
                await self.core.stop_app(app.app_id, "The fal run ended.")

    async def _call(
        self, req: fal_pb.HostedRun, image_id: str, env_id: str
    ) -> AsyncIterator[fal_pb.HostedRunResult]:
        """Run a `@fal.function` once; its output streams to the caller, then its value."""
        run_id = new_id("fc")
        lines: asyncio.Queue[fal_pb.Log | None] = asyncio.Queue()
        partial = {1: "", 2: ""}

        def sink(fd: int, data: bytes) -> None:
            *done, partial[fd] = (partial.get(fd, "") + data.decode(errors="replace")).split("\n")
            level = fal_pb.LogLevel.STDERR if fd == STDERR else fal_pb.LogLevel.STDOUT
            for line in done:
                lines.put_nowait(_log(line, fal_pb.LogSource.USER, level))

        timeout = float(req.machine_requirements.request_timeout or 3600)
        names = list(req.secrets.names) if req.HasField("secrets") else None
        secrets = secret_values(self.core, req.environment_name, names)
        job = asyncio.ensure_future(
            self.launcher.run_once(
                image_id,
                req.function.definition,
                sink,
                timeout,
                secrets,
                req.environment_name or "main",
                [(f.hash, f.relative_path) for f in req.files],
            )
        )
        job.add_done_callback(lambda _: lines.put_nowait(None))
        finished = False
        while not finished:
            item, batch = await lines.get(), []
            while True:
                if item is None:
                    finished = True
                    break
                batch.append(item)
                if lines.empty():
                    break
                item = lines.get_nowait()
            if batch:
                yield fal_pb.HostedRunResult(run_id=run_id, status=_RUNNING, logs=batch, env_id=env_id)
        outcome = await job
        value = fal_pb.SerializedObject(
            method="cloudpickle",
            definition=outcome["definition"],
            was_it_raised=outcome["raised"],
            stringized_traceback=outcome["traceback"],
            exception_type_name=outcome["type"],
            exception_message=outcome["message"],
        )
        yield fal_pb.HostedRunResult(run_id=run_id, status=_SUCCESS, return_value=value, env_id=env_id)

    async def _warm(self, function_id: str) -> None:
        """`fal run` shows the runner starting (its setup) before any request: start one."""
        with contextlib.suppress(Exception):
            async with self.core.server(function_id).request():
                pass

    async def _logs(self, app_id: str) -> AsyncIterator[list[Any]]:
        """The app's output while it runs, line by line (a process writes lines in pieces),
        keeping the app alive (the open stream is its heartbeat)."""
        logs = self.core.app_logs(app_id)
        cursor, beat = 0, 0.0
        partial: dict[tuple[str, int], str] = {}  # (container, fd) → a line not yet ended
        while self.core.app(app_id).running:
            if time.monotonic() - beat > _HEARTBEAT:
                self.core.heartbeat(app_id)
                beat = time.monotonic()
            entries = await logs.read(cursor, _HEARTBEAT)
            if not entries:
                continue
            cursor = entries[-1].entry_id
            lines = []
            for entry in entries:
                key = (entry.task_id, entry.fd)
                *done, partial[key] = (partial.get(key, "") + entry.data).split("\n")
                level = fal_pb.LogLevel.STDERR if entry.fd == STDERR else fal_pb.LogLevel.STDOUT
                lines += [_log(line, fal_pb.LogSource.USER, level) for line in done]
            if lines:
                yield lines


def allowed_secrets(req: Any) -> list[str] | None:
    """The secrets a request lets its build see (None: any of its environment's)."""
    return list(req.secrets.names) if req.HasField("secrets") else None


def build_logs(lines: list[str]) -> list[fal_pb.Log]:
    return [_log(line, fal_pb.LogSource.BUILDER) for line in lines]


def environment_of(definitions: Any) -> FalEnvironment:
    if len(definitions) != 1:
        raise InvalidRequest(f"kiln builds one environment per app; this request has {len(definitions)}")
    definition = definitions[0]
    config = json_format.MessageToDict(definition.configuration)
    return FalEnvironment.from_definition(definition.kind, config, definition.force)


def _log(message: str, source: int, level: int = fal_pb.LogLevel.INFO) -> fal_pb.Log:
    log = fal_pb.Log(message=message, source=source, level=level)  # type: ignore[arg-type]
    log.timestamp.GetCurrentTime()
    return log
