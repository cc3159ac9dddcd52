"""The Modal client's sandbox control plane: create, look up, list, tag, wait for and terminate
sandboxes, and hand out access to their command router (`frontends/modal/command_router.py`),
where exec and stdio happen. These are the V2 RPCs, and the V1 RPCs that take the same messages
(the V1 protocol's own are in `sandboxes_v1.py`): one kind of sandbox underneath.

A sandbox is translated here into a `ContainerSpec` (its image's layers, mounts, environment,
secrets, resources, GPUs, network and port forwards) and owned by the core's `Sandboxes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from grpclib.const import Status as GrpcStatus
from modal_proto import api_pb2

from kiln.config import host_network_env
from kiln.containers import MOUNT, ContainerSpec, Layer, PortForward, Runtime
from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.core.sandbox_records import SandboxFinished, SandboxInfo, SandboxNameTaken, SandboxResult
from kiln.core.sandboxes import Sandbox, SandboxRuntime
from kiln.core.stdio import StdinClosed
from kiln.errors import InvalidRequest, NotFound, Unsupported
from kiln.frontends.modal.dispatch import _STATUS_OF, CallContext, empty
from kiln.frontends.modal.functions import resources_of
from kiln.frontends.modal.launcher import free_loopback_port
from kiln.frontends.modal.network_access import outbound_allowlist
from kiln.frontends.modal.volumes import mount_binds
from kiln.gateway.tls import LoopbackTLS
from kiln.gateway.tunnels import TlsTunnel, server_context

if TYPE_CHECKING:
    from kiln.frontends.modal.command_router import LoopbackRouter

MAX_LONG_POLL = 50.0
_TOKEN_TTL = 3600.0
_NETWORK = api_pb2.NetworkAccess.NetworkAccessType


# An operation on a sandbox that has ended is a conflict (the client's ConflictError), not a bad
# argument; a name already taken is ALREADY_EXISTS.
_STATUS_OF[SandboxFinished] = GrpcStatus.FAILED_PRECONDITION
_STATUS_OF[StdinClosed] = GrpcStatus.FAILED_PRECONDITION
_STATUS_OF[SandboxNameTaken] = GrpcStatus.ALREADY_EXISTS


def router_subject(task_id: str) -> str:
    """The bearer token of a sandbox's command router names its task, and nothing else."""
    return f"task-command-router:{task_id}"


class SandboxHandlers:
    def __init__(self, core: Core, runtime: Runtime, container_router: LoopbackRouter | None = None) -> None:
        self.core = core
        self.runtime = runtime
        self.container_router = container_router
        self._tls: ssl.SSLContext | None = None

    async def AuthTokenGet(
        self, request: api_pb2.AuthTokenGetRequest, ctx: CallContext
    ) -> api_pb2.AuthTokenGetResponse:
        # The V2 sandbox RPCs carry this token beside the caller's own credentials (the token pair,
        # or a container's socket), which are what kiln checks; it is shaped as a JWT because the
        # client reads its expiry.
        return api_pb2.AuthTokenGetResponse(token=self.core.signed_urls.bearer("sandbox-client", _TOKEN_TTL))

    async def AppGetOrCreate(
        self, request: api_pb2.AppGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.AppGetOrCreateResponse:
        """`App.lookup(name)`: the deployed app of that name; with `create_if_missing`, a new
        deployed app with no functions (where sandboxes are made, as on Modal)."""
        core = self.core
        app = core.deployed_app(request.app_name, request.environment_name)
        if app is None:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise NotFound(
                    f"no app is deployed as {request.app_name!r}; deploy it, or use "
                    "App.lookup(name, create_if_missing=True)"
                )
            app = core.create_app(request.app_name, AppState.DEPLOYED, request.environment_name)
            app = core.publish_app(
                app.app_id, name=request.app_name, state=AppState.DEPLOYED, function_ids={}, class_ids={}
            )
        return api_pb2.AppGetOrCreateResponse(app_id=app.app_id)

    async def SandboxCreateV2(
        self, request: api_pb2.SandboxCreateV2Request, ctx: CallContext
    ) -> api_pb2.SandboxCreateV2Response:
        sandbox = await self.create(request.app_id, request.definition, request.secret_sources, request.tags)
        return api_pb2.SandboxCreateV2Response(
            sandbox_id=sandbox.sandbox_id,
            task_id=sandbox.task_id,
            metadata=api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id),
            command_router_access=await self.router_access(sandbox.task_id, ctx),
            tunnels=_tunnel_data(sandbox),
        )

    async def create(
        self,
        app_id: str,
        definition: api_pb2.Sandbox,
        secret_sources: Iterable[api_pb2.SecretSource],
        tags: Iterable[api_pb2.SandboxTag],
        v1: bool = False,
    ) -> Sandbox:
        """A new sandbox of `definition`, running once this returns (`v1`: created over the V1
        protocol, whose IDs it gets)."""
        core = self.core
        app = core.app(app_id)
        if not app.running:
            raise InvalidRequest(
                f"app {app.app_id} has stopped; sandboxes need a running app (App.lookup(...))"
            )
        spec, tunnels = await asyncio.to_thread(self._spec, definition, list(secret_sources))
        resources = core.sandbox_resources(resources_of(definition.resources), app.app_id)
        pty = definition.pty_info
        logs = core.app_logs(app.app_id)
        sandbox_task: list[str] = []

        def to_app_log(fd: int, data: bytes) -> None:
            logs.append(data.decode(errors="replace"), fd, task_id=sandbox_task[0] if sandbox_task else "")

        sandbox = await core.sandboxes.create(
            _as_sandbox_runtime(self.runtime),
            spec,
            app_id=app.app_id,
            environment=app.environment,
            name=definition.name,
            tags={t.tag_name: t.tag_value for t in tags},
            timeout=float(definition.timeout_secs or 300),
            idle_timeout=float(definition.idle_timeout_secs),
            image_id=definition.image_id,
            tunnels=tunnels,
            sink=to_app_log,
            ready_command=list(definition.readiness_probe.exec_command.argv),
            ready_port=definition.readiness_probe.tcp_port,
            ready_interval=max(definition.readiness_probe.interval_ms, 10) / 1000,
            resources=resources,
            pty=(pty.winsz_rows, pty.winsz_cols) if pty.enabled else None,
            v1_ids=v1,
        )
        sandbox_task.append(sandbox.task_id)
        if definition.verbose:
            sandbox.narrate = lambda what: logs.append(
                f"[{sandbox.sandbox_id}] {what}\n", 2, task_id=sandbox.task_id
            )
            sandbox.narrate(f"created: {shlex.join(spec.argv)}")
        sandbox.raw_ports = {p.port for p in definition.open_ports.ports if p.unencrypted}
        if sandbox.tunnels:
            context = await asyncio.to_thread(self._tls_context)
            for port, host_port in sandbox.tunnels.items():
                tunnel = await TlsTunnel.open(context, host_port)
                sandbox.secure_tunnels[port] = tunnel.port
                sandbox.on_end.append(tunnel.close)
        return sandbox

    def _spec(
        self, definition: api_pb2.Sandbox, sources: list[api_pb2.SecretSource]
    ) -> tuple[ContainerSpec, dict[int, int]]:
        core = self.core
        if definition.nfs_mounts or definition.cloud_bucket_mounts:
            raise Unsupported(
                "kiln's sandboxes do not mount network file systems or cloud buckets; use a "
                "modal.Volume (volumes={...}) to share files between sandboxes"
            )
        access = definition.network_access.network_access_type
        allowlist = outbound_allowlist(definition.network_access)
        if definition.HasField("experimental_outbound_policy"):
            raise Unsupported("kiln does not enforce outbound policies; use block_network=True")
        blocked = definition.block_network or access == _NETWORK.BLOCKED
        image_layers, config = core.images.layers(definition.image_id)
        mount_layers = []
        for mount_id in definition.mount_ids:
            core.mounts.layer(mount_id)
            mount_layers.append(Layer(MOUNT, mount_id))
        tunnels: dict[int, int] = {}
        for port in definition.open_ports.ports:
            if not 0 < port.port < 65536:
                raise InvalidRequest(f"port {port.port} is not a TCP port")
            tunnels[port.port] = free_loopback_port()
        env = {
            **({} if blocked else host_network_env()),
            **config.env,
            **secret_env(core, sources, definition.secret_ids),
        }
        if definition.pty_info.enabled:
            terminal_env(env, definition.pty_info)
        argv = list(definition.entrypoint_args) or ["sleep", "2147483647"]
        resources = definition.resources
        # A sandbox's definition carries its Volumes as a function's does (`volume_mounts`).
        volumes = mount_binds(core, cast(api_pb2.Function, definition))
        spec = ContainerSpec(
            image=image_layers,
            mounts=list(reversed(mount_layers)),
            argv=argv,
            env=env,
            cwd=definition.workdir or config.workdir or "/",
            network=not blocked,
            egress_allowlist=None if blocked else allowlist,
            forwards=[PortForward(host, container) for container, host in tunnels.items()],
            cpu_limit=(resources.milli_cpu_max or resources.milli_cpu) / 1000,
            memory_limit_mb=resources.memory_mb_max or resources.memory_mb,
            hostname="modal",
            binds=volumes,
        )
        return spec, tunnels

    def _tls_context(self) -> ssl.SSLContext:
        """Kiln's loopback certificate (`gateway/tls.py`, made once per KILN_HOME)."""
        if self._tls is None:
            tls = LoopbackTLS.load_or_create(self.core.config.home / "tls")
            self._tls = server_context(str(tls.cert), str(tls.key))
        return self._tls

    async def router_access(self, task_id: str, ctx: CallContext) -> api_pb2.CommandRouterAccess:
        url = self.core.grpc_url
        if ctx.task_id and self.container_router is not None:
            # A container reaches the router's own loopback port at its 127.0.0.1 (pasta maps it).
            url = f"http://127.0.0.1:{await self.container_router.ensure()}"
        jwt = self.core.signed_urls.bearer(router_subject(task_id), _TOKEN_TTL)
        return api_pb2.CommandRouterAccess(url=url, jwt=jwt)

    async def SandboxGetCommandRouterAccess(
        self, request: api_pb2.SandboxGetCommandRouterAccessRequest, ctx: CallContext
    ) -> api_pb2.SandboxGetCommandRouterAccessResponse:
        sandboxes = self.core.sandboxes
        sandbox = (
            sandboxes.by_task(request.task_id) if request.task_id else sandboxes.live(request.sandbox_id)
        )
        access = await self.router_access(sandbox.task_id, ctx)
        return api_pb2.SandboxGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt)

    async def SandboxWaitV2(
        self, request: api_pb2.SandboxWaitRequest, ctx: CallContext
    ) -> api_pb2.SandboxWaitResponse:
        sandboxes = self.core.sandboxes
        info = sandboxes.info(request.sandbox_id)
        result = await sandboxes.wait(request.sandbox_id, min(request.timeout, MAX_LONG_POLL))
        return api_pb2.SandboxWaitResponse(result=_generic(result), metadata=_metadata(info))

    async def SandboxTerminateV2(
        self, request: api_pb2.SandboxTerminateRequest, ctx: CallContext
    ) -> api_pb2.SandboxTerminateResponse:
        sandboxes = self.core.sandboxes
        before = sandboxes.info(request.sandbox_id).result
        await sandboxes.terminate(request.sandbox_id)
        return api_pb2.SandboxTerminateResponse(existing_result=_generic(before))

    async def SandboxGetTaskIdV2(
        self, request: api_pb2.SandboxGetTaskIdRequest, ctx: CallContext
    ) -> api_pb2.SandboxGetTaskIdResponse:
        sandboxes = self.core.sandboxes
        info = sandboxes.info(request.sandbox_id)
        if request.wait_until_ready and info.result is None:
            with contextlib.suppress(SandboxFinished):
                await sandboxes.wait_ready(info.task_id, min(request.timeout or MAX_LONG_POLL, MAX_LONG_POLL))
            info = sandboxes.info(request.sandbox_id)
        response = api_pb2.SandboxGetTaskIdResponse(task_id=info.task_id)
        if info.result is not None:
            response.task_result.CopyFrom(_generic(info.result))
        return response

    async def SandboxGetTunnelsV2(
        self, request: api_pb2.SandboxGetTunnelsRequest, ctx: CallContext
    ) -> api_pb2.SandboxGetTunnelsResponse:
        info = self.core.sandboxes.info(request.sandbox_id)
        return api_pb2.SandboxGetTunnelsResponse(tunnels=_tunnel_data(info), result=_generic(info.result))

    async def SandboxListV2(
        self, request: api_pb2.SandboxListRequest, ctx: CallContext
    ) -> api_pb2.SandboxListResponse:
        found = self.core.sandboxes.list(
            app_id=request.app_id,
            environment=None if request.app_id else request.environment_name,
            tags={t.tag_name: t.tag_value for t in request.tags},
            before=request.before_timestamp,
            include_finished=request.include_finished,
        )
        if ctx.task_id:
            own = self.core.task_record(ctx.task_id).app_id if not request.app_id else request.app_id
            found = [info for info in found if info.app_id == own]
        return api_pb2.SandboxListResponse(sandboxes=[_sandbox_info(info) for info in found])

    async def SandboxGetFromNameV2(
        self, request: api_pb2.SandboxGetFromNameRequest, ctx: CallContext
    ) -> api_pb2.SandboxGetFromNameResponse:
        core = self.core
        environment = request.environment_name
        app = core.running_app_named(request.app_name, environment) or core.last_app_named(
            request.app_name, environment
        )
        if app is None:
            raise NotFound(f"no app is named {request.app_name!r}")
        info = core.sandboxes.by_name(app.app_id, request.sandbox_name, request.include_terminated)
        return api_pb2.SandboxGetFromNameResponse(sandbox_id=info.sandbox_id, metadata=_metadata(info))

    # kiln has one kind of sandbox: the V1 RPCs that take the V2 ones' messages are the same.
    SandboxGetFromName = SandboxGetFromNameV2

    async def SandboxTagsGetV2(
        self, request: api_pb2.SandboxTagsGetRequest, ctx: CallContext
    ) -> api_pb2.SandboxTagsGetResponse:
        info = self.core.sandboxes.info(request.sandbox_id)
        return api_pb2.SandboxTagsGetResponse(tags=_tags(info.tags))

    async def SandboxTagsSetV2(self, request: api_pb2.SandboxTagsSetRequest, ctx: CallContext) -> object:
        self.core.sandboxes.set_tags(request.sandbox_id, {t.tag_name: t.tag_value for t in request.tags})
        return empty()

    SandboxWait = SandboxWaitV2
    SandboxTerminate = SandboxTerminateV2
    SandboxGetTaskId = SandboxGetTaskIdV2
    SandboxGetTunnels = SandboxGetTunnelsV2
    SandboxList = SandboxListV2
    SandboxTagsGet = SandboxTagsGetV2
    SandboxTagsSet = SandboxTagsSetV2


def _as_sandbox_runtime(runtime: Runtime) -> SandboxRuntime:
    if not hasattr(runtime, "start") or runtime.ids is None:
        raise Unsupported("this server's runtime cannot run sandboxes")
    return runtime  # type: ignore[return-value]


def secret_env(
    core: Core, sources: Iterable[api_pb2.SecretSource], secret_ids: Iterable[str] = ()
) -> dict[str, str]:
    """The variables of secrets named by ID or sent inline, in order (later ones win)."""
    env = core.secrets.env_of(list(secret_ids))
    for source in sources:
        if source.secret_id:
            env.update(core.secrets.env_of([source.secret_id]))
        elif source.HasField("env"):
            env.update(source.env.contents)
    return env


def terminal_env(env: dict[str, str], pty: api_pb2.PTYInfo) -> None:
    """What a program on a terminal reads of it: the client's TERM (and COLORTERM)."""
    env.setdefault("TERM", pty.env_term or "xterm-256color")
    if pty.env_colorterm:
        env.setdefault("COLORTERM", pty.env_colorterm)


def _generic(result: SandboxResult | None) -> api_pb2.GenericResult:
    if result is None:
        return api_pb2.GenericResult()
    status = api_pb2.GenericResult.GenericStatus.ValueType(int(result.status))
    return api_pb2.GenericResult(status=status, exitcode=result.exitcode, exception=result.message)


def _metadata(info: SandboxInfo) -> api_pb2.SandboxHandleMetadata:
    return api_pb2.SandboxHandleMetadata(app_id=info.app_id, result=_generic(info.result))


def _tags(tags: dict[str, str]) -> list[api_pb2.SandboxTag]:
    return [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in tags.items()]


def _tunnel_data(info: SandboxInfo) -> list[api_pb2.TunnelData]:
    """Each port's TLS view (kiln's loopback certificate in front) and, for `unencrypted_ports`,
    its plain TCP view too, both on this machine's loopback."""
    sandbox = info if isinstance(info, Sandbox) else None
    live = sandbox is not None
    secure = sandbox.secure_tunnels if sandbox is not None else {}
    raw = sandbox.raw_ports if sandbox is not None else set()
    return [
        api_pb2.TunnelData(
            host="127.0.0.1",
            port=secure.get(port, host),
            unencrypted_host="127.0.0.1" if port in raw or not live else "",
            unencrypted_port=host if port in raw or not live else 0,
            container_port=port,
        )
        for port, host in info.tunnels.items()
    ]


def _sandbox_info(info: SandboxInfo) -> api_pb2.SandboxInfo:
    result = _generic(info.result)
    return api_pb2.SandboxInfo(
        id=info.sandbox_id,
        created_at=info.created_at,
        app_id=info.app_id,
        name=info.name,
        tags=_tags(info.tags),
        image_id=info.image_id,
        timeout_secs=int(info.timeout),
        idle_timeout_secs=int(info.idle_timeout),
        task_info=api_pb2.TaskInfo(id=info.task_id, result=result, sandbox_id=info.sandbox_id),
        metadata=api_pb2.SandboxHandleMetadata(app_id=info.app_id, result=result),
        tunnels=_tunnel_data(info),
    )
