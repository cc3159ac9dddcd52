"""Containers as users see them: `modal container list|logs|stop`, and `modal app stop`'s count."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.errors import NotFound
from kiln.frontends.modal.dispatch import CallContext


class TaskHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def TaskList(self, req: api_pb2.TaskListRequest, ctx: CallContext) -> api_pb2.TaskListResponse:
        """Running containers: functions' and sandboxes' (a sandbox is its task's container)."""
        running = [
            (t.task_id, t.function.app_id, t.started_at, t.enqueued_at) for t in self.core.tasks(req.app_id)
        ]
        running += [
            (s.task_id, s.app_id, s.created_at, s.created_at)
            for s in self.core.sandboxes.list(app_id=req.app_id)
        ]
        response = api_pb2.TaskListResponse()
        for task_id, app_id, started_at, enqueued_at in running:
            app = self.core.app(app_id)
            if req.environment_name and app.environment and app.environment != req.environment_name:
                continue
            response.tasks.append(
                api_pb2.TaskStats(
                    task_id=task_id,
                    app_id=app.app_id,
                    app_description=app.description,
                    started_at=started_at,
                    enqueued_at=enqueued_at,
                )
            )
        return response

    async def TaskGetInfo(
        self, req: api_pb2.TaskGetInfoRequest, ctx: CallContext
    ) -> api_pb2.TaskGetInfoResponse:
        record = self.core.task_record(req.task_id)
        return api_pb2.TaskGetInfoResponse(
            app_id=record.app_id,
            info=api_pb2.TaskInfo(
                id=record.task_id,
                enqueued_at=record.enqueued_at,
                started_at=record.started_at,
                finished_at=record.finished_at,
            ),
        )

    async def ContainerStop(
        self, req: api_pb2.ContainerStopRequest, ctx: CallContext
    ) -> api_pb2.ContainerStopResponse:
        """From `modal container stop` (a container's inputs go back to the queue unless
        `graceful`), or from a container stopping itself."""
        task_id = req.task_id or ctx.task_id
        if not self.core.stop_container(task_id, graceful=req.graceful or task_id == ctx.task_id):
            raise NotFound(f"Container {task_id} is not running on this kiln server")
        return api_pb2.ContainerStopResponse()
