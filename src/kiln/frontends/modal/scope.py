"""What a container may ask over its socket: the container RPCs, and the client RPCs a function
legitimately makes — calling functions, looking up named objects, blobs, images — scoped to its own
app and environment. Never another app's logs, containers or lifecycle, nor the list of apps.

The socket is the container's identity (no token travels on it), so this allowlist is all that
stands between user code and the rest of the server: an RPC missing here is PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from kiln.core.core import Core
from kiln.errors import KilnError
from kiln.frontends.modal.dispatch import CallContext
from kiln.frontends.modal.named_objects import DEFAULT_ENVIRONMENT
from kiln.storage.named import NamedObjects

Check = Callable[["ContainerScope", Any], None]


@dataclass(frozen=True)
class ContainerScope:
    """Checks one container's requests against its app and environment."""

    core: Core
    task_id: str
    function_id: str
    app_id: str
    environment: str

    def check(self, name: str, request: Any, ctx: CallContext) -> None:
        rule = RULES.get(name)
        if rule is None:
            raise _denied(
                f"{name} is not available inside a container: a function may call functions and look up "
                "objects of its own environment, but not manage apps or see other apps' containers and logs"
            )
        rule(self, request)

    # -- what a request refers to ---------------------------------------------------------------

    def own_app(self, app_id: str, action: str) -> None:
        if app_id != self.app_id:
            raise _denied(f"a container may {action} its own app only")

    def environment_of(self, environment: str) -> None:
        if environment != self.environment:
            raise _denied(
                f"a container may look up objects in its own environment ({self.environment or 'main'!r}) only"
            )

    def function_in_environment(self, function_id: str) -> None:
        if not function_id:
            return
        try:
            app_id = self.core.function(function_id).app_id
        except KilnError:
            return  # the handler answers NOT_FOUND
        self._app_in_environment(app_id)

    def call_in_environment(self, call_id: str) -> None:
        if not call_id:
            return
        try:
            app_id = self.core.call(call_id).app_id
        except KilnError:
            return
        self._app_in_environment(app_id)

    def own_call(self, call_id: str) -> None:
        try:
            app_id = self.core.call(call_id).app_id
        except KilnError:
            return
        if app_id != self.app_id:
            raise _denied("a container may exchange call data only with calls of its own app")

    def own_task(self, task_id: str) -> None:
        if not task_id or task_id == self.task_id:
            return
        try:
            app_id = self.core.task_record(task_id).app_id
        except KilnError:
            return
        if app_id != self.app_id:
            raise _denied("a container may see and stop containers of its own app only")

    def named_object_environment(self, environment: str) -> None:
        """Dicts, Queues and Volumes name "" as "main" (`named_objects.environment_of`)."""
        if (environment or DEFAULT_ENVIRONMENT) != (self.environment or DEFAULT_ENVIRONMENT):
            raise _denied(
                "a container may use Dicts, Queues and Volumes of its own environment "
                f"({self.environment or 'main'!r}) only"
            )

    def object_in_environment(self, room: NamedObjects, object_id: str) -> None:
        found = room.find(object_id)
        if found is not None:  # else the handler answers NOT_FOUND
            self.named_object_environment(found.environment)

    def own_sandbox(self, sandbox_id: str, task_id: str = "") -> None:
        sandboxes = self.core.sandboxes
        try:
            app_id = sandboxes.by_task(task_id).app_id if task_id else sandboxes.info(sandbox_id).app_id
        except KilnError:
            return
        if app_id != self.app_id:
            raise _denied("a container may use sandboxes of its own app only")

    def _app_in_environment(self, app_id: str) -> None:
        try:
            environment = self.core.app(app_id).environment
        except KilnError:
            return
        if environment != self.environment:
            raise _denied("a container may call functions of its own environment only")


def _denied(message: str) -> GRPCError:
    return GRPCError(GrpcStatus.PERMISSION_DENIED, f"kiln: {message}.")


def _any(scope: ContainerScope, request: Any) -> None:
    pass


def _own_app(what: str) -> Check:
    return lambda scope, request: scope.own_app(request.app_id, what)


def _function(scope: ContainerScope, request: Any) -> None:
    scope.function_in_environment(request.function_id)


def _call(scope: ContainerScope, request: Any) -> None:
    scope.call_in_environment(request.function_call_id)


def _function_and_call(scope: ContainerScope, request: Any) -> None:
    scope.function_in_environment(request.function_id)
    scope.call_in_environment(request.function_call_id)


def _named(scope: ContainerScope, request: Any) -> None:
    scope.environment_of(request.environment_name)


def _own_function(scope: ContainerScope, request: Any) -> None:
    if request.function_id and request.function_id != scope.function_id:
        raise _denied("a container may take inputs of its own function only")


def _task_list(scope: ContainerScope, request: Any) -> None:
    scope.own_app(request.app_id, "list the containers of")


def _task(scope: ContainerScope, request: Any) -> None:
    scope.own_task(request.task_id)


def _put_data(scope: ContainerScope, request: Any) -> None:
    scope.own_call(request.function_call_id)


def _environment(scope: ContainerScope, request: Any) -> None:
    if request.deployment_name:
        scope.environment_of(request.deployment_name)


def _mount(scope: ContainerScope, request: Any) -> None:
    if request.environment_name:
        scope.environment_of(request.environment_name)
    if request.app_id:
        scope.own_app(request.app_id, "create objects for")


def _secret(scope: ContainerScope, request: Any) -> None:
    # A named secret is looked up in the environment the request names ("" is a bucket of its
    # own), so the name must be exactly the container's.
    if request.deployment_name:
        scope.environment_of(request.environment_name)
    if request.app_id:
        scope.own_app(request.app_id, "create objects for")


def _named_object(scope: ContainerScope, request: Any) -> None:
    scope.named_object_environment(request.environment_name)


def _dict(scope: ContainerScope, request: Any) -> None:
    scope.object_in_environment(scope.core.dicts, request.dict_id)


def _queue(scope: ContainerScope, request: Any) -> None:
    scope.object_in_environment(scope.core.queues, request.queue_id)


def _volume(scope: ContainerScope, request: Any) -> None:
    scope.object_in_environment(scope.core.volumes, request.volume_id)


def _sandbox_create(scope: ContainerScope, request: Any) -> None:
    """Sandboxes of its own app, mounting Volumes of its own environment (as every Volume RPC)."""
    scope.own_app(request.app_id, "create sandboxes for")
    for mount in request.definition.volume_mounts:
        scope.object_in_environment(scope.core.volumes, mount.volume_id)


def _image(scope: ContainerScope, request: Any) -> None:
    if request.app_id:
        scope.own_app(request.app_id, "build images for")
    scope.function_in_environment(request.build_function_id)


def _sandbox(scope: ContainerScope, request: Any) -> None:
    scope.own_sandbox(getattr(request, "sandbox_id", ""), getattr(request, "task_id", ""))


_SANDBOX_BY_ID = (
    "SandboxWaitV2", "SandboxTerminateV2", "SandboxGetTaskIdV2", "SandboxGetTunnelsV2", "SandboxTagsGetV2",
    "SandboxTagsSetV2", "SandboxGetCommandRouterAccess",
    # The V1 protocol's (`gpu=`, `pty=True`, MODAL_SANDBOX_V2=0)
    "SandboxWait", "SandboxTerminate", "SandboxGetTaskId", "SandboxGetTunnels", "SandboxTagsGet",
    "SandboxTagsSet", "SandboxGetLogs", "SandboxStdinWrite", "SandboxSnapshotFs", "TaskGetCommandRouterAccess",
)  # fmt: skip
_DICT_BY_ID = (
    "DictGetById", "DictDelete", "DictHeartbeat", "DictGet", "DictUpdate", "DictPop", "DictContains",
    "DictLen", "DictClear", "DictContents",
)  # fmt: skip
_QUEUE_BY_ID = (
    "QueueGetById", "QueueDelete", "QueueHeartbeat", "QueuePut", "QueueGet", "QueueNextItems", "QueueLen",
    "QueueClear",
)  # fmt: skip
_VOLUME_BY_ID = (
    "VolumeGetById", "VolumeDelete", "VolumeHeartbeat", "VolumeRename", "VolumeCommit", "VolumeReload",
    "VolumePutFiles2", "VolumeGetFile2", "VolumeListFiles2", "VolumeRemoveFile2", "VolumeCopyFiles2",
)  # fmt: skip

RULES: dict[str, Check] = {
    # The container's own protocol (the handlers act on the socket's task only).
    "ClientHello": _any,
    "ContainerHello": _any,
    "ContainerHeartbeat": _any,
    "FunctionGetInputs": _own_function,
    "FunctionPutOutputs": _any,
    "TaskResult": _any,
    "FunctionCallPutDataOut": _put_data,
    "FunctionCallGetDataIn": _put_data,
    "FunctionGetDynamicConcurrency": _own_function,
    "ContainerServerLifecycleReady": _any,
    # Calling functions of its environment (its own app's, or a deployed app's by name).
    "FunctionMap": _function,
    "FunctionPutInputs": _function_and_call,
    "FunctionFinishInputs": _function_and_call,
    "FunctionGetOutputs": _call,
    "FunctionGetFlashAuthToken": _function,
    "FlashContainerList": _function,
    "FunctionCallGetDataOut": _call,
    "FunctionCallCancel": _function_and_call,
    "FunctionCallFromId": _call,
    "FunctionBindParams": _function,
    "FunctionGet": _named,
    "ClassGet": _named,
    "FunctionGetCurrentStats": _function,
    "FunctionGetSchedulingParams": _function,
    "FunctionUpdateSchedulingParams": _function,
    "AppGetByDeploymentName": _named,
    "EnvironmentGetOrCreate": _environment,
    # Objects: blobs, mounts, secrets, images.
    "BlobCreate": _any,
    "BlobGet": _any,
    "MountBatchedCheckExistence": _any,
    "MountPutFile": _any,
    "MountGetOrCreate": _mount,
    "SecretGetOrCreate": _secret,
    "ImageGetOrCreate": _image,
    "ImageJoinStreaming": _any,
    # Dicts, Queues and Volumes of its environment.
    **dict.fromkeys(
        ("DictGetOrCreate", "DictList", "QueueGetOrCreate", "QueueList", "VolumeGetOrCreate", "VolumeList"),
        _named_object,
    ),
    **dict.fromkeys(_DICT_BY_ID, _dict),
    **dict.fromkeys(_QUEUE_BY_ID, _queue),
    **dict.fromkeys(_VOLUME_BY_ID, _volume),
    "WorkspaceNameLookup": _any,
    # Its own app: layout, logs, containers, heartbeat, stop.
    "AppGetLayout": _own_app("read the layout of"),
    "AppHeartbeat": _own_app("send heartbeats for"),
    "AppGetLifecycle": _own_app("read the lifecycle of"),
    "AppGetInfo": _own_app("read the details of"),
    "AppGetLogs": _own_app("read the logs of"),
    "AppFetchLogs": _own_app("read the logs of"),
    "AppCountLogs": _own_app("read the logs of"),
    "AppStop": _own_app("stop"),
    "AppClientDisconnect": _own_app("disconnect"),
    "TaskList": _task_list,
    "TaskGetInfo": _task,
    "ContainerStop": _task,
    # Sandboxes of its own app (`Sandbox.create()` inside a function uses the function's app).
    "AuthTokenGet": _any,
    "AppGetOrCreate": _named,
    "SandboxCreateV2": _sandbox_create,
    "SandboxCreate": _sandbox_create,
    "SandboxListV2": _own_app("list the sandboxes of"),
    "SandboxList": _own_app("list the sandboxes of"),
    "SandboxGetFromNameV2": _named,
    "SandboxGetFromName": _named,
    **dict.fromkeys(_SANDBOX_BY_ID, _sandbox),
}
