"""What the Dict and Queue handlers share: `*GetOrCreate`'s creation types and environments."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.modal.dispatch import AlreadyExists, CallContext
from kiln.storage.named import IfExists, NamedObjects, StoredObject

DEFAULT_ENVIRONMENT = "main"


def environment_of(name: str) -> str:
    """The client sends "" for the default environment; kiln names it, so that a script (which
    sends "") and the CLI or a container (which may send "main") find the same objects."""
    return name or DEFAULT_ENVIRONMENT


def get_or_create(
    core: Core,
    room: NamedObjects,
    ctx: CallContext,
    name: str,
    environment_name: str,
    creation: int,
    how_to_create: str,
) -> StoredObject:
    """The object a `DictGetOrCreate`/`QueueGetOrCreate` asks for; `how_to_create` ends the
    NOT_FOUND message of a lookup."""
    environment = environment_of(environment_name)
    if creation == api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL:
        return room.create_ephemeral(environment)
    if creation == api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP:
        if not ctx.task_id:
            raise InvalidRequest(
                f"an anonymous {room.kind} owned by an app can only be created from a container"
            )
        return room.create_for_app(environment, core.task(ctx.task_id).function.app_id)
    if not name:
        raise InvalidRequest(f"a {room.kind} needs a name (or use modal.{room.kind}.ephemeral())")
    if creation == api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED:
        found = room.lookup(name, environment)
        if found is None:
            raise NotFound(f"{room.kind} {name!r} not found in environment {environment!r}. {how_to_create}")
        return found
    if creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS:
        return room.create(name, environment, IfExists.REPLACE)[0]
    obj, created = room.create(name, environment)
    if creation == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS and not created:
        raise AlreadyExists(f"{room.kind} {name!r} already exists in environment {environment!r}")
    return obj


def page_of(
    room: NamedObjects, environment_name: str, pagination: api_pb2.ListPagination
) -> list[StoredObject]:
    """A `*List` page: newest first, strictly older than `created_before` when set."""
    return room.page(environment_of(environment_name), pagination.max_objects, pagination.created_before)


def creation_info(obj: StoredObject) -> api_pb2.CreationInfo:
    return api_pb2.CreationInfo(created_at=obj.created_at)
