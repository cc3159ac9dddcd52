"""Queue RPCs, translated to the queues room (`kiln.storage.queues`)."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.frontends.modal.dispatch import MAX_LONG_POLL, CallContext, empty
from kiln.frontends.modal.named_objects import creation_info, environment_of, get_or_create, page_of
from kiln.storage.named import StoredObject
from kiln.storage.queues import DEFAULT_PARTITION_TTL


def _metadata(obj: StoredObject) -> api_pb2.QueueMetadata:
    return api_pb2.QueueMetadata(name=obj.name, creation_info=creation_info(obj))


def _poll_timeout(seconds: float) -> float:
    return max(0.0, min(seconds, MAX_LONG_POLL))


class QueueHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.queues = core.queues

    async def QueueGetOrCreate(
        self, req: api_pb2.QueueGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.QueueGetOrCreateResponse:
        fix = (
            f"Create it with `modal.Queue.from_name({req.deployment_name!r}, create_if_missing=True)` "
            f"or `modal queue create {req.deployment_name}`."
        )
        obj = get_or_create(
            self.core,
            self.queues,
            ctx,
            req.deployment_name,
            req.environment_name,
            req.object_creation_type,
            fix,
        )
        return api_pb2.QueueGetOrCreateResponse(queue_id=obj.object_id, metadata=_metadata(obj))

    async def QueueGetById(
        self, req: api_pb2.QueueGetByIdRequest, ctx: CallContext
    ) -> api_pb2.QueueGetByIdResponse:
        obj = self.queues.info(req.queue_id)
        return api_pb2.QueueGetByIdResponse(queue_id=obj.object_id, metadata=_metadata(obj))

    async def QueueList(self, req: api_pb2.QueueListRequest, ctx: CallContext) -> api_pb2.QueueListResponse:
        infos = []
        for obj in page_of(self.queues, req.environment_name, req.pagination):
            partitions, items = self.queues.partitions(obj.object_id)
            if req.total_size_limit > 0:
                items = min(items, req.total_size_limit)
            infos.append(
                api_pb2.QueueListResponse.QueueInfo(
                    name=obj.name,
                    created_at=obj.created_at,
                    num_partitions=partitions,
                    total_size=items,
                    queue_id=obj.object_id,
                    metadata=_metadata(obj),
                )
            )
        return api_pb2.QueueListResponse(queues=infos, environment_name=environment_of(req.environment_name))

    async def QueueDelete(self, req: api_pb2.QueueDeleteRequest, ctx: CallContext) -> object:
        self.queues.delete(req.queue_id)
        return empty()

    async def QueueHeartbeat(self, req: api_pb2.QueueHeartbeatRequest, ctx: CallContext) -> object:
        self.queues.heartbeat(req.queue_id)
        return empty()

    async def QueuePut(self, req: api_pb2.QueuePutRequest, ctx: CallContext) -> object:
        self.queues.put(
            req.queue_id,
            list(req.values),
            req.partition_key,
            float(req.partition_ttl_seconds) or DEFAULT_PARTITION_TTL,
            # The client re-sends a put whose answer it lost with the same key: add it once.
            request_id=ctx.metadata.get("x-idempotency-key", ""),
        )
        return empty()

    async def QueueGet(self, req: api_pb2.QueueGetRequest, ctx: CallContext) -> api_pb2.QueueGetResponse:
        values = await self.queues.get(
            req.queue_id, req.n_values or 1, req.partition_key, _poll_timeout(req.timeout)
        )
        return api_pb2.QueueGetResponse(values=values)

    async def QueueNextItems(
        self, req: api_pb2.QueueNextItemsRequest, ctx: CallContext
    ) -> api_pb2.QueueNextItemsResponse:
        after = int(req.last_entry_id) if req.last_entry_id.isdigit() else 0
        items = await self.queues.next_items(
            req.queue_id, req.partition_key, after, _poll_timeout(req.item_poll_timeout)
        )
        return api_pb2.QueueNextItemsResponse(
            items=[api_pb2.QueueItem(value=value, entry_id=str(entry_id)) for entry_id, value in items]
        )

    async def QueueLen(self, req: api_pb2.QueueLenRequest, ctx: CallContext) -> api_pb2.QueueLenResponse:
        return api_pb2.QueueLenResponse(len=self.queues.len(req.queue_id, req.partition_key, req.total))

    async def QueueClear(self, req: api_pb2.QueueClearRequest, ctx: CallContext) -> object:
        self.queues.clear(req.queue_id, req.partition_key, req.all_partitions)
        return empty()
