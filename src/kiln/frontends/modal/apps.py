"""App lifecycle, environments and deployment history."""

from __future__ import annotations

import time
from typing import Any, cast

from modal_proto import api_pb2

from kiln.core.apps import App, AppState
from kiln.core.core import Core
from kiln.errors import InvalidRequest
from kiln.frontends.modal.client_deps import IMAGE_BUILDER_VERSION
from kiln.frontends.modal.dispatch import AlreadyExists, CallContext, empty
from kiln.frontends.modal.registry import Registry
from kiln.ids import stable_id


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
                    image_builder_version=IMAGE_BUILDER_VERSION, webhook_suffix=""
                ),
            ),
        )

    async def EnvironmentList(self, req: object, ctx: CallContext) -> api_pb2.EnvironmentListResponse:
        return api_pb2.EnvironmentListResponse(
            items=[
                api_pb2.EnvironmentListItem(
                    name=e.name,
                    created_at=e.created_at,
                    default=e.default,
                    environment_id=stable_id("en", e.name),
                    webhook_suffix="",
                )
                for e in self.core.environments.list()
            ]
        )

    async def EnvironmentCreate(self, req: api_pb2.EnvironmentCreateRequest, ctx: CallContext) -> object:
        try:
            self.core.environments.create(req.name)
        except InvalidRequest as exc:
            raise AlreadyExists(str(exc)) from None
        return empty()

    async def EnvironmentDelete(self, req: api_pb2.EnvironmentDeleteRequest, ctx: CallContext) -> object:
        self.core.environments.delete(req.name)
        return empty()

    def _url(self, app: App) -> str:
        return self.core.signed_urls.app_page(app.app_id)

    async def AppCreate(self, req: api_pb2.AppCreateRequest, ctx: CallContext) -> api_pb2.AppCreateResponse:
        state = AppState(req.app_state) if req.app_state else AppState.EPHEMERAL
        app = self.core.create_app(req.description, state, req.environment_name)
        url = self._url(app)
        return api_pb2.AppCreateResponse(app_id=app.app_id, app_page_url=url, app_logs_url=url)

    async def AppHeartbeat(self, req: api_pb2.AppHeartbeatRequest, ctx: CallContext) -> object:
        self.core.heartbeat(req.app_id)
        return empty()

    async def AppPublish(
        self, req: api_pb2.AppPublishRequest, ctx: CallContext
    ) -> api_pb2.AppPublishResponse:
        app = self.core.publish_app(
            req.app_id,
            name=req.name,
            state=AppState(req.app_state) if req.app_state else None,
            function_ids=dict(req.function_ids),
            class_ids=dict(req.class_ids),
            tag=req.deployment_tag,
            client_version=ctx.metadata.get("x-modal-client-version", ""),
            commit_info=req.commit_info.SerializeToString() if req.HasField("commit_info") else b"",
        )
        return api_pb2.AppPublishResponse(url=self._url(app), deployed_at=time.time())

    async def AppGetLayout(
        self, req: api_pb2.AppGetLayoutRequest, ctx: CallContext
    ) -> api_pb2.AppGetLayoutResponse:
        app = self.core.app(req.app_id)
        return api_pb2.AppGetLayoutResponse(
            app_layout=self.registry.app_layout(app.app_id, app.function_ids, app.class_ids)
        )

    async def AppClientDisconnect(self, req: api_pb2.AppClientDisconnectRequest, ctx: CallContext) -> object:
        await self.core.disconnect_app(req.app_id)
        return empty()

    async def AppStop(self, req: api_pb2.AppStopRequest, ctx: CallContext) -> object:
        await self.core.stop_app(req.app_id)
        return empty()

    async def AppList(self, req: api_pb2.AppListRequest, ctx: CallContext) -> api_pb2.AppListResponse:
        return api_pb2.AppListResponse(
            apps=[
                api_pb2.AppListResponse.AppListItem(
                    app_id=app.app_id,
                    description=app.description,
                    state=cast(Any, int(app.state)),
                    created_at=app.created_at,
                    stopped_at=app.stopped_at,
                    n_running_tasks=self.core.running_containers(app.app_id),
                    name=app.name,
                )
                for app in self.core.apps()
            ]
        )

    async def AppGetLifecycle(
        self, req: api_pb2.AppGetLifecycleRequest, ctx: CallContext
    ) -> api_pb2.AppGetLifecycleResponse:
        return api_pb2.AppGetLifecycleResponse(lifecycle=_lifecycle(self.core.app(req.app_id)))

    async def AppGetByDeploymentName(
        self, req: api_pb2.AppGetByDeploymentNameRequest, ctx: CallContext
    ) -> api_pb2.AppGetByDeploymentNameResponse:
        environment = req.environment_name or "main"
        app = self.core.deployed_app(req.name, req.environment_name)
        if app is not None:
            return api_pb2.AppGetByDeploymentNameResponse(
                app_id=app.app_id, environment_name=environment, lifecycle=_lifecycle(app)
            )
        # An empty app_id (not NOT_FOUND) tells the client the name is free; a stopped app of
        # that name is offered as the previous one (`modal app logs/history` still find it).
        previous = self.core.last_app_named(req.name, req.environment_name)
        return api_pb2.AppGetByDeploymentNameResponse(
            previous_app_id=previous.app_id if previous else "",
            environment_name=environment,
            lifecycle=_lifecycle(previous) if previous else None,
        )

    async def AppDeploymentHistory(
        self, req: api_pb2.AppDeploymentHistoryRequest, ctx: CallContext
    ) -> api_pb2.AppDeploymentHistoryResponse:
        app = self.core.app(req.app_id)
        history = self.core.app_history(req.app_id)
        response = api_pb2.AppDeploymentHistoryResponse(production_app_version=app.version)
        for deployment in history:
            item = api_pb2.AppDeploymentHistory(
                app_id=app.app_id,
                version=deployment.version,
                client_version=deployment.client_version,
                deployed_at=deployment.deployed_at,
                deployed_by="kiln",
                tag=deployment.tag,
                rollback_version=deployment.rollback_of,
                rollback_allowed=deployment.version != app.version,
            )
            if deployment.commit_info:
                item.commit_info.ParseFromString(deployment.commit_info)
            response.app_deployment_histories.append(item)
        return response

    async def AppRollback(
        self, req: api_pb2.AppRollbackRequest, ctx: CallContext
    ) -> api_pb2.AppRollbackResponse:
        deployment = self.core.rollback(req.app_id, req.version)
        app = self.core.app(req.app_id)
        return api_pb2.AppRollbackResponse(url=self._url(app), deployed_at=deployment.deployed_at)

    async def AppGetInfo(
        self, req: api_pb2.AppGetInfoRequest, ctx: CallContext
    ) -> api_pb2.AppGetInfoResponse:
        app = self.core.app(req.app_id)
        return api_pb2.AppGetInfoResponse(
            info=api_pb2.AppHandleMetadata(
                description=app.description,
                app_id=app.app_id,
                environment_name=app.environment,
                lifecycle=_lifecycle(app),
            )
        )


def _lifecycle(app: App) -> api_pb2.AppLifecycle:
    return api_pb2.AppLifecycle(
        app_state=cast(Any, int(app.state)),
        created_at=app.created_at,
        stopped_at=app.stopped_at,
        version=app.version,
    )
