"""App lifecycle, environments and log streaming."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

from modal_proto import api_pb2

from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.frontends.modal.dispatch import CallContext, long_poll
from kiln.frontends.modal.registry import Registry
from kiln.ids import stable_id
from kiln.streams import LogEntry

_KEEP_RUNNING = {AppState.DEPLOYED, AppState.DETACHED}


class AppHandlers:
    def __init__(self, core: Core, registry: Registry) -> None:
        self.core = core
        self.registry = registry

    async def ClientHello(self, req: object, ctx: CallContext) -> api_pb2.ClientHelloResponse:
        return api_pb2.ClientHelloResponse()

    async def EnvironmentGetOrCreate(
        self, req: api_pb2.EnvironmentGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.EnvironmentGetOrCreateResponse:
        name = req.deployment_name or "main"
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id=stable_id("en", name),
            metadata=api_pb2.EnvironmentMetadata(
                name=name,
                settings=api_pb2.EnvironmentSettings(
                    image_builder_version=self.core.config.image_builder_version, webhook_suffix=""
                ),
            ),
        )

    async def AppCreate(self, req: api_pb2.AppCreateRequest, ctx: CallContext) -> api_pb2.AppCreateResponse:
        state = AppState(req.app_state) if req.app_state else AppState.EPHEMERAL
        app = self.core.apps.create(req.description, state, req.environment_name)
        url = f"{self.core.http_url}/apps/{app.app_id}"
        return api_pb2.AppCreateResponse(app_id=app.app_id, app_page_url=url, app_logs_url=url + "/logs")

    async def AppHeartbeat(self, req: api_pb2.AppHeartbeatRequest, ctx: CallContext) -> object:
        self.core.apps.get(req.app_id).last_heartbeat = time.monotonic()
        return _empty()

    async def AppPublish(
        self, req: api_pb2.AppPublishRequest, ctx: CallContext
    ) -> api_pb2.AppPublishResponse:
        app = self.core.apps.get(req.app_id)
        app.function_ids = dict(req.function_ids)
        app.class_ids = dict(req.class_ids)
        if req.name:
            app.name = req.name
        if req.app_state:
            app.state = AppState(req.app_state)
        return api_pb2.AppPublishResponse(
            url=f"{self.core.http_url}/apps/{app.app_id}", deployed_at=time.time()
        )

    async def AppGetLayout(
        self, req: api_pb2.AppGetLayoutRequest, ctx: CallContext
    ) -> api_pb2.AppGetLayoutResponse:
        app = self.core.apps.get(req.app_id)
        return api_pb2.AppGetLayoutResponse(
            app_layout=self.registry.app_layout(app.app_id, app.function_ids, app.class_ids)
        )

    async def AppClientDisconnect(self, req: api_pb2.AppClientDisconnectRequest, ctx: CallContext) -> object:
        app = self.core.apps.get(req.app_id)
        if app.state not in _KEEP_RUNNING:
            await self.core.stop_app(app)
        return _empty()

    async def AppStop(self, req: api_pb2.AppStopRequest, ctx: CallContext) -> object:
        await self.core.stop_app(self.core.apps.get(req.app_id))
        return _empty()

    async def AppList(self, req: api_pb2.AppListRequest, ctx: CallContext) -> api_pb2.AppListResponse:
        items = []
        for app in sorted(self.core.apps.apps.values(), key=lambda a: a.created_at, reverse=True):
            running = sum(
                len(p.tasks) for p in self.core.scheduler.pools.values() if p.function.app_id == app.app_id
            )
            items.append(
                api_pb2.AppListResponse.AppListItem(
                    app_id=app.app_id,
                    description=app.description,
                    state=cast(Any, int(app.state)),
                    created_at=app.created_at,
                    stopped_at=app.stopped_at,
                    n_running_tasks=running,
                    name=app.name,
                )
            )
        return api_pb2.AppListResponse(apps=items)

    async def AppGetLifecycle(
        self, req: api_pb2.AppGetLifecycleRequest, ctx: CallContext
    ) -> api_pb2.AppGetLifecycleResponse:
        app = self.core.apps.get(req.app_id)
        return api_pb2.AppGetLifecycleResponse(
            lifecycle=api_pb2.AppLifecycle(
                app_state=cast(Any, int(app.state)), created_at=app.created_at, stopped_at=app.stopped_at
            )
        )

    async def AppGetByDeploymentName(
        self, req: api_pb2.AppGetByDeploymentNameRequest, ctx: CallContext
    ) -> api_pb2.AppGetByDeploymentNameResponse:
        app = self.core.apps.by_name(req.name, req.environment_name)
        # An empty app_id (not NOT_FOUND) tells the client the name is free.
        return api_pb2.AppGetByDeploymentNameResponse(app_id=app.app_id if app else "")

    async def AppGetLogs(
        self, req: api_pb2.AppGetLogsRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.TaskLogsBatch]:
        app = self.core.apps.get(req.app_id)
        cursor, deadline = long_poll(req.last_entry_id, req.timeout)
        while True:
            remaining = deadline - time.monotonic()
            entries = await app.logs.read(cursor, max(0.0, remaining))
            entries = [e for e in entries if _wanted(e, req)]
            if entries:
                cursor = entries[-1].entry_id
                for batch in _batches(entries):
                    yield batch
            elif app.logs.closed and not app.logs.after(cursor):
                yield api_pb2.TaskLogsBatch(app_done=True, entry_id=str(cursor))
                return
            if time.monotonic() >= deadline:
                return


def _wanted(entry: LogEntry, req: api_pb2.AppGetLogsRequest) -> bool:
    return (
        (not req.task_id or entry.task_id == req.task_id)
        and (not req.function_id or entry.function_id == req.function_id)
        and (not req.file_descriptor or entry.fd == req.file_descriptor)
    )


def _batches(entries: list[LogEntry]) -> list[api_pb2.TaskLogsBatch]:
    """Consecutive entries from the same source share one batch."""
    batches: list[api_pb2.TaskLogsBatch] = []
    source: tuple[str, str, str] | None = None
    for entry in entries:
        key = (entry.task_id, entry.function_id, entry.image_id)
        if key != source:
            batches.append(
                api_pb2.TaskLogsBatch(
                    task_id=entry.task_id, function_id=entry.function_id, image_id=entry.image_id
                )
            )
            source = key
        batches[-1].items.append(
            api_pb2.TaskLogs(data=entry.data, file_descriptor=cast(Any, entry.fd), timestamp=entry.timestamp)
        )
        batches[-1].entry_id = str(entry.entry_id)
    return batches


def _empty() -> object:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty()
