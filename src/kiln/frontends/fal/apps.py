"""fal deployments: `fal deploy` (RegisterApplication), `fal apps list` (ListAliases),
`fal apps list-rev` (ListApplications), `fal apps set-rev` (SetAlias), `fal apps rollout`,
`fal apps scale` (UpdateApplication), `fal apps delete` (DeleteAlias), and their runners.

A deployed fal app is a DEPLOYED kiln app named by its alias, in its environment, with one server
function whose ID stays the same across deploys: a new revision replaces the definition, and the
pool drains the old runners as requests finish while new ones start on demand (so `--strategy
rolling` and `recreate` both leave no request unanswered; write-up in docs/architecture.md). The
function's definition holds everything its runners need, so a restart brings the app back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import isolate_proto as fal_pb

from kiln.core.apps import App, AppState
from kiln.core.core import Core
from kiln.core.journal import Deployment
from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.fal.runs import RunHandlers, allowed_secrets, build_logs, environment_of
from kiln.frontends.modal.dispatch import CallContext
from kiln.ids import new_id

# What `fal apps scale` changes and `fal deploy` keeps unless --reset-scale.
SCALING = (
    "keep_alive", "max_multiplexing", "max_concurrency", "min_concurrency", "concurrency_buffer",
    "request_timeout", "startup_timeout", "machine_types",
)  # fmt: skip


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
        app, function_id = self._alias_app(alias, req.environment_name or "main")
        revision = new_id("fr")
        definition = RunnerDefinition.from_request(alias, image_id, req, revision=revision)
        if not req.scale and function_id in app.function_ids.values():
            # `fal deploy` without --reset-scale keeps the scaling the alias has now.
            current = RunnerDefinition.from_bytes(self.core.function(function_id).definition)
            definition = dataclasses.replace(definition, **{k: getattr(current, k) for k in SCALING})
        urls = self._serve(app, function_id, definition)
        yield fal_pb.RegisterApplicationResult(
            result=fal_pb.RegisterApplicationResultType(application_id=revision),
            service_urls=urls,
            env_id=env_id,
        )

    async def SetAlias(self, req: fal_pb.SetAliasRequest, ctx: CallContext) -> fal_pb.SetAliasResult:
        """`fal apps set-rev <app> <revision> [--auth]`: the alias serves that revision (of any
        fal app of the environment) again, as a new deployment; its runners drain to it as after
        a deploy. Without `--auth` the revision keeps its own."""
        environment = req.environment_name or "main"
        definition = dataclasses.replace(self._revision(req.revision, environment), name=req.alias)
        if req.HasField("auth_mode"):
            definition = dataclasses.replace(
                definition, public=req.auth_mode != fal_pb.ApplicationAuthMode.PRIVATE
            )
        app, function_id = self._alias_app(req.alias, environment)
        self._serve(app, function_id, definition)
        return fal_pb.SetAliasResult(alias_info=self._alias_info(app, definition))

    async def RolloutApplication(
        self, req: fal_pb.RolloutApplicationRequest, ctx: CallContext
    ) -> fal_pb.RolloutApplicationResult:
        """`fal apps rollout <app> [--force]`: fresh runners. The current ones finish their
        requests and stop (with --force: stop now); new ones start on demand and for
        `min_concurrency`, as after a deploy."""
        app = self._require(req.application_name, req.environment_name or "main")
        for task in self.core.tasks(app.app_id):
            self.core.stop_container(task.task_id, graceful=not req.force)
        return fal_pb.RolloutApplicationResult()

    async def UpdateApplication(
        self, req: fal_pb.UpdateApplicationRequest, ctx: CallContext
    ) -> fal_pb.UpdateApplicationResult:
        """`fal apps scale`: change the set fields, keep the others; runners restart with them."""
        app = self._require(req.application_name, req.environment_name or "main")
        function = self.core.function(app.function_ids[app.name])
        definition = RunnerDefinition.from_bytes(function.definition)
        changes: dict[str, Any] = {
            name: getattr(req, name)
            for name in SCALING
            if name != "machine_types" and req.HasField(name)  # type: ignore[arg-type]
        }
        if req.machine_types:
            changes["machine_types"] = list(req.machine_types)
        definition = dataclasses.replace(definition, **changes)
        self.core.register_function(definition.function_def(function.function_id, app.app_id), b"")
        return fal_pb.UpdateApplicationResult(alias_info=self._alias_info(app, definition))

    async def ListAliasRunners(
        self, req: fal_pb.ListAliasRunnersRequest, ctx: CallContext
    ) -> fal_pb.ListAliasRunnersResponse:
        app = self._require(req.alias, req.environment_name or "main")
        return fal_pb.ListAliasRunnersResponse(runners=self._runner_infos([app]))

    async def ListRunners(
        self, req: fal_pb.ListRunnersRequest, ctx: CallContext
    ) -> fal_pb.ListRunnersResponse:
        apps = [a for a in self.core.apps() if a.frontend == "fal" and a.running]
        return fal_pb.ListRunnersResponse(runners=self._runner_infos(apps))

    async def StopRunner(self, req: fal_pb.StopRunnerRequest, ctx: CallContext) -> fal_pb.StopRunnerResponse:
        self._runner(req.runner_id)
        self.core.stop_container(req.runner_id, graceful=True)
        return fal_pb.StopRunnerResponse()

    async def KillRunner(self, req: fal_pb.KillRunnerRequest, ctx: CallContext) -> fal_pb.KillRunnerResponse:
        self._runner(req.runner_id)
        self.core.stop_container(req.runner_id, graceful=False)
        return fal_pb.KillRunnerResponse()

    def _runner(self, runner_id: str) -> None:
        task = next((t for t in self.core.tasks() if t.task_id == runner_id), None)
        if task is None or task.function.frontend != "fal":
            raise NotFound(f"No fal runner {runner_id!r} on this kiln server")

    def _runner_infos(self, apps: list[App]) -> list[fal_pb.RunnerInfo]:
        infos = []
        now = time.time()
        for app in apps:
            for task in self.core.tasks(app.app_id):
                definition = RunnerDefinition.from_bytes(task.function.definition)
                state = fal_pb.RunnerInfo.State
                info = fal_pb.RunnerInfo(
                    runner_id=task.task_id,
                    in_flight_requests=len(task.inflight),
                    uptime=int(now - task.started_at) if task.started_at else 0,
                    revision=definition.revision,
                    alias=app.name,
                    machine_type=(definition.machine_types or ["XS"])[0],
                    state=state.DRAINING if task.draining else state.RUNNING if task.ready else state.SETUP,
                )
                infos.append(info)
        return infos

    async def ListAliases(self, req: fal_pb.ListAliasesRequest, ctx: CallContext) -> fal_pb.ListAliasesResult:
        result = fal_pb.ListAliasesResult()
        for app, definition in self._deployments(req.environment_name or "main"):
            result.aliases.append(self._alias_info(app, definition))
        return result

    async def ListApplications(
        self, req: fal_pb.ListApplicationsRequest, ctx: CallContext
    ) -> fal_pb.ListApplicationsResult:
        """The current revision of every deployed app, or, for one app (`fal apps list-rev`),
        each of its revisions, newest first (from the core's deployment history)."""
        result = fal_pb.ListApplicationsResult()
        for app, definition in self._deployments(req.environment_name or "main"):
            if not req.application_name:
                result.applications.append(self._application_info(definition, app, app.created_at))
            elif app.name == req.application_name:
                listed: set[str] = set()  # `set-rev` serves a revision again: list it once, newest
                for deployment in self.core.app_history(app.app_id):
                    if deployment.tag in listed:
                        continue
                    listed.add(deployment.tag)
                    revision = _definition_in(app, deployment)
                    if revision is None:
                        continue
                    if revision.revision == definition.revision:  # as scaled since, and serving
                        info = self._application_info(definition, app, deployment.deployed_at)
                    else:
                        info = self._application_info(revision, None, deployment.deployed_at)
                    result.applications.append(info)
        return result

    def _application_info(
        self, definition: RunnerDefinition, live: App | None, created_at: float
    ) -> fal_pb.ApplicationInfo:
        """A revision's settings; `live`: the app it serves now (for its runner count)."""
        info = fal_pb.ApplicationInfo(
            application_id=definition.revision,
            active_runners=self._runners(live) if live is not None else 0,
            environment_name=definition.environment,
            **_settings(definition),
        )
        info.created_at.FromSeconds(int(created_at))
        return info

    async def DeleteAlias(self, req: fal_pb.DeleteAliasRequest, ctx: CallContext) -> fal_pb.DeleteAliasResult:
        app = self._require(req.alias, req.environment_name or "main")
        function_id = app.function_ids.get(req.alias, "")
        definition = RunnerDefinition.from_bytes(self.core.function(function_id).definition)
        self.routes.remove(req.alias, function_id)
        await self.core.stop_app(app.app_id, "The fal app was deleted.")
        return fal_pb.DeleteAliasResult(revision=definition.revision)

    def _alias_app(self, alias: str, environment: str) -> tuple[App, str]:
        """The deployed app of the alias (a new one if none) and its server function's ID (which
        stays the same across its revisions)."""
        app = self._deployed(alias, environment)
        if app is None:
            app = self.core.create_app(alias, AppState.INITIALIZING, environment, frontend="fal")
        return app, app.function_ids.get(alias) or new_id("fu")

    def _serve(self, app: App, function_id: str, definition: RunnerDefinition) -> fal_pb.ServiceURLs:
        """Make `definition` the alias's revision: its runners' definition, a deployment in the
        app's history (tagged with the revision), and its URL."""
        alias = definition.name
        self.core.register_function(definition.function_def(function_id, app.app_id), b"")
        self.core.publish_app(
            app.app_id,
            name=alias,
            state=AppState.DEPLOYED,
            function_ids={alias: function_id},
            class_ids={},
            tag=definition.revision,
        )
        return self.routes.add(alias, function_id, public=definition.public)

    def _revision(self, revision: str, environment: str) -> RunnerDefinition:
        """A revision of any fal app of the environment, from the apps' deployment histories."""
        for app in self.core.apps(environment):
            if app.frontend != "fal":
                continue
            for deployment in self.core.app_history(app.app_id):
                found = _definition_in(app, deployment) if deployment.tag == revision else None
                if found is not None:
                    return found
        raise NotFound(
            f"No revision {revision!r} of a fal app in environment {environment!r}; "
            "`fal apps list-rev <app>` lists an app's revisions"
        )

    def _require(self, alias: str, environment: str) -> App:
        app = self._deployed(alias, environment)
        if app is None:
            raise NotFound(
                f"No fal app named {alias!r} is deployed on this kiln server; deploy it with `fal deploy`"
            )
        return app

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
            active_runners=self._runners(app),
            environment_name=app.environment,
            **_settings(definition),
        )


def _settings(definition: RunnerDefinition) -> dict[str, Any]:
    """A revision's scaling and timeouts, as fal's AliasInfo and ApplicationInfo both carry them."""
    return {
        "max_concurrency": definition.max_concurrency,
        "max_multiplexing": definition.max_multiplexing,
        "keep_alive": int(definition.keep_alive),
        "min_concurrency": definition.min_concurrency,
        "concurrency_buffer": definition.concurrency_buffer,
        "machine_types": definition.machine_types,
        "request_timeout": int(definition.request_timeout),
        "startup_timeout": int(definition.startup_timeout),
    }


def _definition_in(app: App, deployment: Deployment) -> RunnerDefinition | None:
    """The runners' definition a deployment of the app froze (its one server function's)."""
    function_id = deployment.function_ids.get(app.name, "")
    record = next((f for f in deployment.functions if f.function_id == function_id), None)
    return RunnerDefinition.from_bytes(record.definition) if record is not None else None
