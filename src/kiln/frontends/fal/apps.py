"""fal deployments: `fal deploy` (RegisterApplication), `fal apps list` (ListAliases),
`fal apps list-rev` (ListApplications) and `fal apps delete` (DeleteAlias).

A deployed fal app is a DEPLOYED kiln app named by its alias, in its environment, with one server
function whose ID stays the same across deploys: a new revision replaces the definition, and the
pool drains the old runners as requests finish while new ones start on demand (so `--strategy
rolling` and `recreate` both leave no request unanswered; write-up in docs/architecture.md). The
function's definition holds everything its runners need, so a restart brings the app back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import isolate_proto as fal_pb

from kiln.core.apps import App, AppState
from kiln.core.core import Core
from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.fal.runs import RunHandlers, allowed_secrets, build_logs, environment_of
from kiln.frontends.modal.dispatch import CallContext
from kiln.ids import new_id


class AppHandlers:
    def __init__(self, core: Core, routes: FalRoutes, runs: RunHandlers) -> None:
        self.core = core
        self.routes = routes
        self.runs = runs

    async def RegisterApplication(
        self, req: fal_pb.RegisterApplicationRequest, ctx: CallContext
    ) -> AsyncIterator[fal_pb.RegisterApplicationResult]:
        if req.entrypoint or not req.HasField("function"):
            raise InvalidRequest("kiln deploys fal Apps shipped by the client (no entrypoint= deploys yet)")
        alias = req.application_name
        if not alias:
            raise InvalidRequest("a fal deploy needs an app name")
        environment = environment_of(req.environments)
        env_id = environment.env_id
        if req.build_environment or not req.HasField("build_environment"):
            async for lines in self.runs.build(environment, req.environment_name, allowed_secrets(req)):
                yield fal_pb.RegisterApplicationResult(env_id=env_id, logs=build_logs(lines))
        image_id = self.runs.image_of(env_id)
        env_name = req.environment_name or "main"
        app = self._deployed(alias, env_name)
        if app is None:
            app = self.core.create_app(alias, AppState.INITIALIZING, env_name, frontend="fal")
        function_id = app.function_ids.get(alias) or new_id("fu")
        revision = new_id("fr")
        definition = RunnerDefinition.from_request(alias, image_id, req, revision=revision)
        self.core.register_function(definition.function_def(function_id, app.app_id), b"")
        self.core.publish_app(
            app.app_id,
            name=alias,
            state=AppState.DEPLOYED,
            function_ids={alias: function_id},
            class_ids={},
            tag=revision,
        )
        urls = self.routes.add(alias, function_id, public=definition.public)
        yield fal_pb.RegisterApplicationResult(
            result=fal_pb.RegisterApplicationResultType(application_id=revision),
            service_urls=urls,
            env_id=env_id,
        )

    async def ListAliases(self, req: fal_pb.ListAliasesRequest, ctx: CallContext) -> fal_pb.ListAliasesResult:
        result = fal_pb.ListAliasesResult()
        for app, definition in self._deployments(req.environment_name or "main"):
            result.aliases.append(self._alias_info(app, definition))
        return result

    async def ListApplications(
        self, req: fal_pb.ListApplicationsRequest, ctx: CallContext
    ) -> fal_pb.ListApplicationsResult:
        result = fal_pb.ListApplicationsResult()
        for app, definition in self._deployments(req.environment_name or "main"):
            if req.application_name and app.name != req.application_name:
                continue
            info = fal_pb.ApplicationInfo(
                application_id=definition.revision,
                max_concurrency=definition.max_concurrency,
                max_multiplexing=definition.max_multiplexing,
                keep_alive=int(definition.keep_alive),
                min_concurrency=definition.min_concurrency,
                active_runners=self._runners(app),
                machine_types=definition.machine_types,
                environment_name=app.environment,
            )
            info.created_at.FromSeconds(int(app.created_at))
            result.applications.append(info)
        return result

    async def DeleteAlias(self, req: fal_pb.DeleteAliasRequest, ctx: CallContext) -> fal_pb.DeleteAliasResult:
        app = self._deployed(req.alias, req.environment_name or "main")
        if app is None:
            raise NotFound(f"No fal app named {req.alias!r} is deployed on this kiln server")
        function_id = app.function_ids.get(req.alias, "")
        definition = RunnerDefinition.from_bytes(self.core.function(function_id).definition)
        self.routes.remove(req.alias, function_id)
        await self.core.stop_app(app.app_id, "The fal app was deleted.")
        return fal_pb.DeleteAliasResult(revision=definition.revision)

    def _deployed(self, alias: str, environment: str) -> App | None:
        app = self.core.deployed_app(alias, environment)
        if app is not None and app.frontend != "fal":
            raise InvalidRequest(
                f"{alias!r} is a Modal app deployed on this kiln server; give the fal app another name"
            )
        return app

    def _deployments(self, environment: str) -> list[tuple[App, RunnerDefinition]]:
        found = []
        for app in self.core.apps(environment):
            if app.frontend == "fal" and app.state == AppState.DEPLOYED and app.name in app.function_ids:
                function = self.core.function(app.function_ids[app.name])
                found.append((app, RunnerDefinition.from_bytes(function.definition)))
        return found

    def _runners(self, app: App) -> int:
        return sum(1 for task in self.core.tasks(app.app_id) if task.ready and not task.draining)

    def _alias_info(self, app: App, definition: RunnerDefinition) -> fal_pb.AliasInfo:
        return fal_pb.AliasInfo(
            alias=app.name,
            revision=definition.revision,
            auth_mode=fal_pb.ApplicationAuthMode.PUBLIC
            if definition.public
            else fal_pb.ApplicationAuthMode.PRIVATE,
            max_concurrency=definition.max_concurrency,
            max_multiplexing=definition.max_multiplexing,
            keep_alive=int(definition.keep_alive),
            active_runners=self._runners(app),
            min_concurrency=definition.min_concurrency,
            machine_types=definition.machine_types,
            request_timeout=int(definition.request_timeout),
            startup_timeout=int(definition.startup_timeout),
            environment_name=app.environment,
        )
