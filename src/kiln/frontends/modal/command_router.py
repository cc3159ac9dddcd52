"""The TaskCommandRouter service: a sandbox's exec, stdio and readiness, served on kiln's gRPC
port beside the ModalClient service (grpclib routes by path).

Every request carries `authorization: Bearer <jwt>`, a token the server signed for one task
(`SandboxGetCommandRouterAccess`, one hour); a request naming another task, or with no live
token, is UNAUTHENTICATED (the client then fetches a fresh token once). Nothing else is asked of
the caller: the token is the capability to drive that one sandbox.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpclib.const
import grpclib.server
from google.protobuf import empty_pb2
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2

from kiln import errors
from kiln.containers.exec import ExecSpec
from kiln.core.core import Core
from kiln.core.sandboxes import Exec, Sandbox
from kiln.core.stdio import OutputLog, StdinClosed
from kiln.frontends.modal.dispatch import _Method, _methods, receive, translated_errors
from kiln.frontends.modal.network_access import outbound_allowlist
from kiln.frontends.modal.sandboxes import router_subject, secret_env, terminal_env

SERVICE = sr_pb2.DESCRIPTOR.services_by_name["TaskCommandRouter"]
_WAIT_POLL = 50.0  # the client waits 60 s per TaskExecWait, and asks again on DEADLINE_EXCEEDED
_STDERR = sr_pb2.TaskExecStderrConfig
_STDOUT = sr_pb2.TaskExecStdoutConfig
# What the client execs for `sb.filesystem`: kiln runs its own tool in its place (fs_tools.py).
FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"


class CommandRouter:
    def __init__(self, core: Core) -> None:
        self.core = core

    # --- exec

    async def TaskExecStart(
        self, request: sr_pb2.TaskExecStartRequest, ctx: Any
    ) -> sr_pb2.TaskExecStartResponse:
        sandbox = self.core.sandboxes.by_task(request.task_id)
        _no_sidecar(request.container_id)
        if not request.command_args:
            raise errors.InvalidRequest("exec needs a command")
        env = {
            **sandbox.env,
            **secret_env(self.core, request.secret_sources, request.secret_ids),
            **dict(request.env),
        }
        spec = ExecSpec(
            argv=list(request.command_args),
            env=env,
            cwd=request.workdir or sandbox.workdir,
            stdout="devnull" if request.stdout_config == _STDOUT.TASK_EXEC_STDOUT_CONFIG_DEVNULL else "pipe",
            stderr={
                _STDERR.TASK_EXEC_STDERR_CONFIG_DEVNULL: "devnull",
                _STDERR.TASK_EXEC_STDERR_CONFIG_STDOUT: "stdout",
            }.get(request.stderr_config, "pipe"),
            tool="fs_tools" if request.command_args[0] == FS_TOOLS else "",
        )
        if request.pty_info.enabled:
            spec.pty = True
            terminal_env(spec.env, request.pty_info)
        window = (request.pty_info.winsz_rows, request.pty_info.winsz_cols)
        if sandbox.narrate is not None and not spec.tool:
            sandbox.narrate(f"exec: {shlex.join(spec.argv)}")
        await self.core.sandboxes.exec(
            request.task_id, request.exec_id, spec, float(request.timeout_secs), window
        )
        return sr_pb2.TaskExecStartResponse()

    def _exec(self, task_id: str, exec_id: str) -> tuple[Sandbox, Exec]:
        sandbox = self.core.sandboxes.by_task(task_id)
        run = sandbox.execs.get(exec_id)
        if run is None:
            raise errors.NotFound(f"no exec {exec_id} in this sandbox")
        return sandbox, run

    async def TaskExecStdioRead(
        self, request: sr_pb2.TaskExecStdioReadRequest, ctx: Any
    ) -> AsyncIterator[sr_pb2.TaskExecStdioReadResponse]:
        sandbox, run = self._exec(request.task_id, request.exec_id)
        stderr = request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR
        async for _, data in _read(sandbox, run.stderr if stderr else run.stdout, request.offset):
            yield sr_pb2.TaskExecStdioReadResponse(data=data)

    async def TaskExecStdinWrite(
        self, request: sr_pb2.TaskExecStdinWriteRequest, ctx: Any
    ) -> sr_pb2.TaskExecStdinWriteResponse:
        sandbox, run = self._exec(request.task_id, request.exec_id)
        await _write(run.stdin.write(request.offset, request.data, request.eof))
        sandbox.touch()
        return sr_pb2.TaskExecStdinWriteResponse()

    async def TaskExecStdinStatus(
        self, request: sr_pb2.TaskExecStdinStatusRequest, ctx: Any
    ) -> sr_pb2.TaskExecStdinStatusResponse:
        _, run = self._exec(request.task_id, request.exec_id)
        return sr_pb2.TaskExecStdinStatusResponse(
            num_bytes_written=run.stdin.written, closed=run.stdin.closed
        )

    async def TaskExecStdinWriteStream(
        self, requests: AsyncIterator[sr_pb2.TaskExecStdinWriteStreamRequest], ctx: Any
    ) -> sr_pb2.TaskExecStdinWriteStreamResponse:
        first = await anext(requests, None)
        if first is None or not first.HasField("start"):
            raise errors.InvalidRequest("a stdin stream starts with its task, exec and offset")
        ctx.authorize(first.start.task_id)
        sandbox, run = self._exec(first.start.task_id, first.start.exec_id)
        offset = first.start.offset
        async for message in requests:
            if message.HasField("end"):
                await _write(run.stdin.write(offset, b"", True))
                break
            await _write(run.stdin.write(offset, message.data, False))
            offset += len(message.data)
            sandbox.touch()
        return sr_pb2.TaskExecStdinWriteStreamResponse()

    async def TaskExecWait(
        self, request: sr_pb2.TaskExecWaitRequest, ctx: Any
    ) -> sr_pb2.TaskExecWaitResponse:
        _, run = self._exec(request.task_id, request.exec_id)
        try:
            await asyncio.wait_for(run.done.wait(), _WAIT_POLL)
        except asyncio.TimeoutError:
            raise GRPCError(GrpcStatus.DEADLINE_EXCEEDED, "the command is still running") from None
        return sr_pb2.TaskExecWaitResponse(**_exit_status(run.returncode))

    async def TaskExecPoll(
        self, request: sr_pb2.TaskExecPollRequest, ctx: Any
    ) -> sr_pb2.TaskExecPollResponse:
        _, run = self._exec(request.task_id, request.exec_id)
        if run.returncode is None:
            return sr_pb2.TaskExecPollResponse()
        return sr_pb2.TaskExecPollResponse(**_exit_status(run.returncode))

    async def TaskSnapshotFilesystem(
        self, request: sr_pb2.TaskSnapshotFilesystemRequest, ctx: Any
    ) -> sr_pb2.TaskSnapshotFilesystemResponse:
        """The sandbox's files now, as an image later sandboxes and functions start from."""
        _no_sidecar(request.container_id)
        image_id = await self.core.snapshot_sandbox(request.task_id)
        return sr_pb2.TaskSnapshotFilesystemResponse(image_id=image_id)

    async def TaskSnapshotDirectory(
        self, request: sr_pb2.TaskSnapshotDirectoryRequest, ctx: Any
    ) -> sr_pb2.TaskSnapshotDirectoryResponse:
        """`Sandbox.snapshot_directory(path)`: the directory's contents, as an image's root."""
        _no_sidecar(request.container_id)
        _no_encryption_key(request.customer_supplied_encryption_key)
        image_id = await self.core.snapshot_directory(request.task_id, _path(request.path))
        return sr_pb2.TaskSnapshotDirectoryResponse(image_id=image_id)

    async def TaskMountDirectory(
        self, request: sr_pb2.TaskMountDirectoryRequest, ctx: Any
    ) -> empty_pb2.Empty:
        """`Sandbox.mount_image(path, image)`; an empty image ID is `Image.from_scratch()`."""
        _no_sidecar(request.container_id)
        _no_encryption_key(request.customer_supplied_encryption_key)
        await self.core.mount_image(request.task_id, _path(request.path), request.image_id)
        return empty_pb2.Empty()

    async def TaskUnmountDirectory(
        self, request: sr_pb2.TaskUnmountDirectoryRequest, ctx: Any
    ) -> empty_pb2.Empty:
        _no_sidecar(request.container_id)
        await self.core.unmount_image(request.task_id, _path(request.path))
        return empty_pb2.Empty()

    async def TaskReloadVolumes(
        self, request: sr_pb2.TaskReloadVolumesRequest, ctx: Any
    ) -> sr_pb2.TaskReloadVolumesResponse:
        # A sandbox's Volumes are the volumes' own directories, bound in: always current.
        _no_sidecar(request.container_id)
        self.core.sandboxes.by_task(request.task_id)
        return sr_pb2.TaskReloadVolumesResponse()

    async def TaskSetNetworkAccess(
        self, request: sr_pb2.TaskSetNetworkAccessRequest, ctx: Any
    ) -> sr_pb2.TaskSetNetworkAccessResponse:
        """`Sandbox._experimental_set_outbound_network_policy`: the sandbox's egress rules, replaced."""
        access = request.network_access
        if access.network_access_type == api_pb2.NetworkAccess.NetworkAccessType.BLOCKED:
            raise errors.InvalidRequest(
                "a running sandbox's network cannot be removed; set an empty outbound_cidr_allowlist=[] "
                "to allow no egress"
            )
        await self.core.sandboxes.set_egress(request.task_id, outbound_allowlist(access))
        return sr_pb2.TaskSetNetworkAccessResponse()

    # --- the sandbox's entrypoint

    async def SandboxStdioReadV2(
        self, request: sr_pb2.SandboxStdioReadV2Request, ctx: Any
    ) -> AsyncIterator[sr_pb2.SandboxStdioReadV2Response]:
        sandbox = self.core.sandboxes.by_task(request.task_id)
        stderr = request.file_descriptor == sr_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR
        async for offset, data in _read(
            sandbox, sandbox.stderr if stderr else sandbox.stdout, request.offset
        ):
            yield sr_pb2.SandboxStdioReadV2Response(data=data, starting_offset=offset)

    async def SandboxStdinWriteV2(
        self, request: sr_pb2.SandboxStdinWriteV2Request, ctx: Any
    ) -> sr_pb2.SandboxStdinWriteV2Response:
        sandbox = self.core.sandboxes.by_task(request.task_id)
        await _write(sandbox.stdin.write(request.offset, request.data, request.eof))
        sandbox.touch()
        return sr_pb2.SandboxStdinWriteV2Response()

    async def SandboxWaitUntilReady(
        self, request: sr_pb2.SandboxWaitUntilReadyTcrRequest, ctx: Any
    ) -> sr_pb2.SandboxWaitUntilReadyTcrResponse:
        if not await self.core.sandboxes.wait_ready(request.task_id, min(request.timeout or 300.0, 3600.0)):
            raise GRPCError(
                GrpcStatus.DEADLINE_EXCEEDED, "the sandbox's readiness probe did not succeed in time"
            )
        return sr_pb2.SandboxWaitUntilReadyTcrResponse(ready_at=time.time())


def _no_sidecar(container_id: str) -> None:
    if container_id:
        raise errors.Unsupported("kiln's sandboxes have no sidecar containers")


def _no_encryption_key(key: bytes) -> None:
    if key:
        raise errors.Unsupported(
            "kiln does not encrypt snapshots or mounted images with a customer key; leave out "
            "_experimental_encryption_key"
        )


def _path(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise errors.InvalidRequest("the path is not UTF-8; give a UTF-8 absolute path") from None


async def _read(sandbox: Sandbox, output: OutputLog, offset: int) -> AsyncIterator[tuple[int, bytes]]:
    async for start, data in output.read(offset):
        sandbox.touch()
        yield start, data


async def _write(write: Any) -> None:
    try:
        await write
    except StdinClosed as exc:
        raise GRPCError(GrpcStatus.FAILED_PRECONDITION, str(exc)) from exc


def _exit_status(returncode: int | None) -> dict[str, int]:
    if returncode is None:
        return {}
    if returncode < 0:
        return {"signal": -returncode}
    return {"code": returncode}


# --- the service


@dataclass
class RouterContext:
    """Who calls: the bearer of a token for one task."""

    token: str
    check: Callable[[str, str], bool]

    def authorize(self, task_id: str) -> None:
        if not task_id or not self.check(self.token, router_subject(task_id)):
            raise GRPCError(
                GrpcStatus.UNAUTHENTICATED,
                "this command-router token is missing, expired or for another sandbox; ask the server for "
                "access again (SandboxGetCommandRouterAccess)",
            )


class LoopbackRouter:
    """The router alone on a port of this machine's loopback, started on first use: containers
    reach it (pasta maps it into them) to drive the sandboxes they create, and reach nothing else
    of the server's gRPC side (whose main port stays out of their reach)."""

    def __init__(self, router: CommandRouter, max_message_bytes: int) -> None:
        self._mapping = router_mapping(router, max_message_bytes)
        self._server: grpclib.server.Server | None = None
        self.port = 0
        self._lock = asyncio.Lock()

    async def ensure(self) -> int:
        async with self._lock:
            if self._server is None:
                from kiln.frontends.modal.dispatch import Service

                server = grpclib.server.Server([Service(self._mapping)])
                await server.start("127.0.0.1", 0)
                self.port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self._server = server
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def router_mapping(router: CommandRouter, max_message_bytes: int) -> dict[str, grpclib.const.Handler]:
    """The grpclib mapping of every TaskCommandRouter method (UNIMPLEMENTED where kiln has none)."""
    check = router.core.signed_urls.check_bearer
    return {
        m.path: grpclib.const.Handler(
            _wrap(m, getattr(router, m.name, None), check, max_message_bytes),
            m.cardinality,
            m.request,
            m.response,
        )
        for m in _methods(SERVICE)
    }


def _wrap(method: _Method, impl: Any, check: Callable[[str, str], bool], max_bytes: int) -> Any:
    name = method.name

    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        metadata = {str(k): str(v) for k, v in (stream.metadata or {}).items()}
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        ctx = RouterContext(token if scheme.lower() == "bearer" else "", check)
        if impl is None:
            raise GRPCError(
                GrpcStatus.UNIMPLEMENTED,
                f"kiln does not implement {name} yet, so the sandbox feature that uses it is not available.",
            )
        if not ctx.token:
            ctx.authorize("")
        with translated_errors(name):
            if SERVICE.methods_by_name[name].client_streaming:
                await stream.send_message(await impl(_requests(stream, method, max_bytes), ctx))
                return
            request = await receive(stream, method.request, name, max_bytes)
            ctx.authorize(request.task_id)
            if method.server_streaming:
                async for response in impl(request, ctx):
                    await stream.send_message(response)
            else:
                await stream.send_message(await impl(request, ctx))

    return handle


async def _requests(
    stream: grpclib.server.Stream[Any, Any], method: _Method, max_bytes: int
) -> AsyncIterator[Any]:
    while True:
        message = await stream.recv_message()
        if message is None:
            return
        if message.ByteSize() > max_bytes:
            raise GRPCError(
                GrpcStatus.RESOURCE_EXHAUSTED, f"{method.name}: a message is over the server's limit"
            )
        yield message
