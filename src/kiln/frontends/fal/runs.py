"""fal's BuildEnvironment and Run: a requirement set becomes a cached image; `fal run` becomes an
ephemeral kiln app whose one function is the fal App, served by runners (kiln containers of a
server pool: started on demand, scaled by requests, kept `keep_alive` seconds when idle).

The Run stream carries the app's URLs once, then the runners' output as it comes; it stays open
while the app lives. When the client goes away (Ctrl-C cancels the stream) the app stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import isolate_proto as fal_pb
from google.protobuf import json_format

from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.core.functions import Autoscaling, FunctionDef
from kiln.errors import ImageBuildError, InvalidRequest, NotFound
from kiln.frontends.fal.environments import FalEnvironment
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.modal.dispatch import CallContext
from kiln.ids import new_id
from kiln.images.planner import Recipe
from kiln.streams import STDERR

_HEARTBEAT = 5.0  # seconds between the Run stream's heartbeats of its app
_RUNNING = fal_pb.HostedRunStatus(state=fal_pb.HostedRunStatus.State.IN_PROGRESS)
_SUCCESS = fal_pb.HostedRunStatus(state=fal_pb.HostedRunStatus.State.SUCCESS)


class RunHandlers:
    def __init__(self, core: Core, routes: FalRoutes) -> None:
        self.core = core
        self.routes = routes
        self.images: dict[str, str] = {}  # env_id → image_id, for runs with build_environment=false

    async def BuildEnvironment(
        self, req: fal_pb.BuildEnvironmentRequest, ctx: CallContext
    ) -> AsyncIterator[fal_pb.BuildEnvironmentResult]:
        environment = _environment(req.environments)
        env_id = environment.env_id
        async for lines in self._build(environment):
            yield fal_pb.BuildEnvironmentResult(
                env_id=env_id, logs=[_log(line, fal_pb.LogSource.BUILDER) for line in lines]
            )
        yield fal_pb.BuildEnvironmentResult(env_id=env_id, status=_SUCCESS)

    async def _build(self, environment: FalEnvironment) -> AsyncIterator[list[str]]:
        """Build (or find) the environment's image, yielding its build output as it comes."""
        recipe = Recipe(dockerfile=environment.dockerfile(), force_build=environment.force)
        build = self.core.images.request(recipe)
        cursor = 0
        while True:
            entries = await build.logs.read(cursor, 1.0)
            if entries:
                cursor = entries[-1].entry_id
                yield [line for e in entries for line in e.data.splitlines() if line.strip()]
            if build.done.is_set() and not build.logs.after(cursor):
                break
        if build.error:
            raise ImageBuildError(f"The environment could not be built: {build.error}")
        self.images[environment.env_id] = build.image_id

    async def Run(self, req: fal_pb.HostedRun, ctx: CallContext) -> AsyncIterator[fal_pb.HostedRunResult]:
        if req.entrypoint or not req.HasField("function"):
            raise InvalidRequest(
                "kiln runs fal Apps and functions shipped by the client (no entrypoint= runs yet)"
            )
        environment = _environment(req.environments)
        env_id = environment.env_id
        if req.build_environment:
            async for lines in self._build(environment):
                yield fal_pb.HostedRunResult(
                    env_id=env_id, logs=[_log(line, fal_pb.LogSource.BUILDER) for line in lines]
                )
        image_id = self.images.get(env_id)
        if image_id is None:
            raise NotFound(
                f"Pre-built environment not found ({env_id}); run the build again (fal run builds it)"
            )
        name = req.application_name or "fal-app"
        app = self.core.create_app(name, AppState.EPHEMERAL, req.environment_name or "main", frontend="fal")
        function = _function(app.app_id, name, image_id, req)
        self.core.register_function(function)
        self.core.publish_app(
            app.app_id, name=name, state=None, function_ids={name: function.function_id}, class_ids={}
        )
        urls = self.routes.add(
            name, function.function_id, public=req.auth_mode != fal_pb.ApplicationAuthMode.PRIVATE
        )
        try:
            yield fal_pb.HostedRunResult(run_id=app.app_id, status=_RUNNING, service_urls=urls, env_id=env_id)
            warm = asyncio.ensure_future(self._warm(function.function_id))
            async for logs in self._logs(app.app_id):
                yield fal_pb.HostedRunResult(run_id=app.app_id, status=_RUNNING, logs=logs)
            warm.cancel()
        finally:
            self.routes.remove(name, function.function_id)
            with contextlib.suppress(NotFound):
                await self.core.stop_app(app.app_id, "The fal run ended.")

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


def _environment(definitions: Any) -> FalEnvironment:
    if len(definitions) != 1:
        raise InvalidRequest(f"kiln builds one environment per app; this request has {len(definitions)}")
    definition = definitions[0]
    config = json_format.MessageToDict(definition.configuration)
    return FalEnvironment.from_definition(definition.kind, config, definition.force)


def _function(app_id: str, name: str, image_id: str, req: fal_pb.HostedRun) -> FunctionDef:
    machine = req.machine_requirements
    multiplexing = machine.max_multiplexing or 1
    definition = RunnerDefinition(
        name=name,
        image_id=image_id,
        function=req.function.definition,
        port=machine.exposed_port or 8080,
        health_path=req.health_check_config.path or "/health",
        public=req.auth_mode != fal_pb.ApplicationAuthMode.PRIVATE,
    )
    return FunctionDef(
        function_id=new_id("fu"),
        app_id=app_id,
        tag=name,
        image_id=image_id,
        timeout=float(machine.request_timeout or 3600),
        startup_timeout=float(machine.startup_timeout or 600),
        max_inputs=multiplexing,
        target_inputs=multiplexing,
        autoscaling=Autoscaling(
            min_containers=machine.min_concurrency,
            max_containers=machine.max_concurrency or None,
            buffer_containers=machine.concurrency_buffer,
            scaledown_window=float(machine.keep_alive or 60),
        ),
        definition=definition.to_bytes(),
        frontend="fal",
        http_port=definition.port,
    )


def _log(message: str, source: int, level: int = fal_pb.LogLevel.INFO) -> fal_pb.Log:
    log = fal_pb.Log(message=message, source=source, level=level)  # type: ignore[arg-type]
    log.timestamp.GetCurrentTime()
    return log
