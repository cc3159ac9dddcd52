"""Dict RPCs, translated to the dicts room (`kiln.storage.dicts`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.frontends.modal.dispatch import CallContext, empty
from kiln.frontends.modal.named_objects import creation_info, environment_of, get_or_create, page_of
from kiln.storage.named import StoredObject


def _metadata(obj: StoredObject) -> api_pb2.DictMetadata:
    return api_pb2.DictMetadata(name=obj.name, creation_info=creation_info(obj))


class DictHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.dicts = core.dicts

    async def DictGetOrCreate(
        self, req: api_pb2.DictGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.DictGetOrCreateResponse:
        fix = (
            f"Create it with `modal.Dict.from_name({req.deployment_name!r}, create_if_missing=True)` "
            f"or `modal dict create {req.deployment_name}`."
        )
        obj = get_or_create(
            self.core,
            self.dicts,
            ctx,
            req.deployment_name,
            req.environment_name,
            req.object_creation_type,
            fix,
        )
        if req.data:
            self.dicts.put(obj.object_id, [(e.key, e.value) for e in req.data])
        return api_pb2.DictGetOrCreateResponse(dict_id=obj.object_id, metadata=_metadata(obj))

    async def DictGetById(
        self, req: api_pb2.DictGetByIdRequest, ctx: CallContext
    ) -> api_pb2.DictGetByIdResponse:
        obj = self.dicts.info(req.dict_id)
        return api_pb2.DictGetByIdResponse(dict_id=obj.object_id, metadata=_metadata(obj))

    async def DictList(self, req: api_pb2.DictListRequest, ctx: CallContext) -> api_pb2.DictListResponse:
        objs = page_of(self.dicts, req.environment_name, req.pagination)
        return api_pb2.DictListResponse(
            dicts=[
                api_pb2.DictListResponse.DictInfo(
                    name=o.name, created_at=o.created_at, dict_id=o.object_id, metadata=_metadata(o)
                )
                for o in objs
            ],
            environment_name=environment_of(req.environment_name),
        )

    async def DictDelete(self, req: api_pb2.DictDeleteRequest, ctx: CallContext) -> object:
        self.dicts.delete(req.dict_id)
        return empty()

    async def DictHeartbeat(self, req: api_pb2.DictHeartbeatRequest, ctx: CallContext) -> object:
        self.dicts.heartbeat(req.dict_id)
        return empty()

    async def DictGet(self, req: api_pb2.DictGetRequest, ctx: CallContext) -> api_pb2.DictGetResponse:
        value = self.dicts.get(req.dict_id, req.key)
        return api_pb2.DictGetResponse(found=value is not None, value=value or b"")

    async def DictUpdate(
        self, req: api_pb2.DictUpdateRequest, ctx: CallContext
    ) -> api_pb2.DictUpdateResponse:
        entries = [(e.key, e.value) for e in req.updates]
        return api_pb2.DictUpdateResponse(created=self.dicts.put(req.dict_id, entries, req.if_not_exists))

    async def DictPop(self, req: api_pb2.DictPopRequest, ctx: CallContext) -> api_pb2.DictPopResponse:
        value = self.dicts.pop(req.dict_id, req.key)
        return api_pb2.DictPopResponse(found=value is not None, value=value or b"")

    async def DictContains(
        self, req: api_pb2.DictContainsRequest, ctx: CallContext
    ) -> api_pb2.DictContainsResponse:
        return api_pb2.DictContainsResponse(found=self.dicts.contains(req.dict_id, req.key))

    async def DictLen(self, req: api_pb2.DictLenRequest, ctx: CallContext) -> api_pb2.DictLenResponse:
        return api_pb2.DictLenResponse(len=self.dicts.len(req.dict_id))

    async def DictClear(self, req: api_pb2.DictClearRequest, ctx: CallContext) -> object:
        self.dicts.clear(req.dict_id)
        return empty()

    async def DictContents(
        self, req: api_pb2.DictContentsRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.DictEntry]:
        for key, value in self.dicts.contents(req.dict_id):
            yield api_pb2.DictEntry(key=key if req.keys else b"", value=value if req.values else b"")
