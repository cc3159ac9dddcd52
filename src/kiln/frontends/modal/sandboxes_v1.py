"""The V1 sandbox protocol's own RPCs: the client sends them for `gpu=`, `pty=True` or
`MODAL_SANDBOX_V2=0` at `Sandbox.create`, and for handles whose ID has the V1 shape.

V1 is another adapter over the same sandboxes (`sandboxes.py` serves the V1 RPCs that take the
V2 ones' messages): here the entrypoint's output travels as log batches (`SandboxGetLogs`, text,
resumed by entry ID: the byte offset after the batch), its stdin as numbered writes
(`SandboxStdinWrite`), and exec and the filesystem go through the same command router, reached
by task (`TaskGetCommandRouterAccess`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.core.stdio import OutputLog
from kiln.errors import NotFound
from kiln.frontends.modal.dispatch import CallContext, long_poll
from kiln.frontends.modal.sandboxes import SandboxHandlers

_SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS


class SandboxV1Handlers:
    def __init__(self, core: Core, sandboxes: SandboxHandlers) -> None:
        self.core = core
        self.sandboxes = sandboxes

    async def SandboxCreate(
        self, request: api_pb2.SandboxCreateRequest, ctx: CallContext
    ) -> api_pb2.SandboxCreateResponse:
        # V1 names every secret by ID (the client turns `env=` into an ephemeral secret).
        sandbox = await self.sandboxes.create(request.app_id, request.definition, (), request.tags, v1=True)
        return api_pb2.SandboxCreateResponse(
            sandbox_id=sandbox.sandbox_id, metadata=api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id)
        )

    async def SandboxGetLogs(
        self, request: api_pb2.SandboxGetLogsRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.TaskLogsBatch]:
        """The entrypoint's stdout or stderr from the entry ID on, until it ends (the last batch
        says `eof`) or the long poll's time is up (the client asks again from where it got)."""
        sandbox = self.core.sandboxes.live(request.sandbox_id)
        fd = request.file_descriptor
        output = sandbox.stderr if fd == api_pb2.FILE_DESCRIPTOR_STDERR else sandbox.stdout
        offset, deadline = long_poll(request.last_entry_id, request.timeout)
        async for end, text in _text(output, offset, deadline):
            sandbox.touch()
            yield api_pb2.TaskLogsBatch(
                entry_id=str(end),
                task_id=sandbox.task_id,
                sandbox_id=sandbox.sandbox_id,
                items=[api_pb2.TaskLogs(data=text, file_descriptor=fd)] if text else [],
                eof=output.closed and end >= output.end,
            )

    async def SandboxStdinWrite(
        self, request: api_pb2.SandboxStdinWriteRequest, ctx: CallContext
    ) -> api_pb2.SandboxStdinWriteResponse:
        """A numbered write to the entrypoint's stdin (`eof` closes it). The client re-sends a
        write whose answer it lost with the same idempotency key: that write is applied once.
        Without a key, the index says it (each writer numbers its writes from 1)."""
        sandbox = self.core.sandboxes.live(request.sandbox_id)
        token = ctx.metadata.get("x-idempotency-key") or f"index:{request.index}"
        await sandbox.stdin.write_once(token, request.input, request.eof)
        sandbox.touch()
        return api_pb2.SandboxStdinWriteResponse()

    async def TaskGetCommandRouterAccess(
        self, request: api_pb2.TaskGetCommandRouterAccessRequest, ctx: CallContext
    ) -> api_pb2.TaskGetCommandRouterAccessResponse:
        try:
            sandbox = self.core.sandboxes.by_task(request.task_id)
        except NotFound as exc:
            raise NotFound(f"{exc} (kiln runs `modal container exec` in sandboxes only)") from None
        access = await self.sandboxes.router_access(sandbox.task_id, ctx)
        return api_pb2.TaskGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt)

    async def SandboxSnapshotFs(
        self, request: api_pb2.SandboxSnapshotFsRequest, ctx: CallContext
    ) -> api_pb2.SandboxSnapshotFsResponse:
        """The client's legacy snapshot (MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT=1): the same image
        the command router's TaskSnapshotFilesystem makes."""
        sandbox = self.core.sandboxes.live(request.sandbox_id)
        image_id = await self.core.snapshot_sandbox(sandbox.task_id)
        return api_pb2.SandboxSnapshotFsResponse(
            image_id=image_id, result=api_pb2.GenericResult(status=_SUCCESS)
        )


async def _text(output: OutputLog, offset: int, deadline: float) -> AsyncIterator[tuple[int, str]]:
    """(offset after, text) of the output from `offset` until it closes or `deadline` passes:
    whole UTF-8 characters only (a character cut by a chunk waits for its other bytes; what is no
    UTF-8 at all becomes U+FFFD), and last, at its end, one empty item."""
    held = b""
    end = offset
    async for start, chunk in output.read(offset, until=deadline):
        data = held + chunk if start == end else chunk  # after a gap (output dropped), start anew
        cut = utf8_boundary(data)
        held = data[cut:]
        end = start + len(chunk)
        if cut:
            yield end - len(held), data[:cut].decode(errors="replace")
    if output.closed and end >= output.end:
        yield end, held.decode(errors="replace")


def utf8_boundary(data: bytes) -> int:
    """The length of `data` without a UTF-8 character cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        if byte < 0xC0:  # ASCII (or a stray continuation): nothing is cut
            return len(data)
        needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return len(data) - back if back < needed else len(data)
    return len(data)
