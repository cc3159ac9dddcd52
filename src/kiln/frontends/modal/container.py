"""The container's side: the RPCs `modal._container_entrypoint` makes from inside a sandbox.

Each container talks over its own unix socket, so `ctx.task_id` always names the caller.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from kiln.core.calls import DataChunk, Invocation
from kiln.core.core import Core
from kiln.core.results import Result, Status
from kiln.frontends.modal.dispatch import CallContext

_DATA_IN_WAIT = 55.0  # seconds; the client asks again when a stream ends
_GET_INPUTS_WAIT = 20.0  # the client has no deadline here; answer empty now and then so it re-asks
_ASYNC = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC
_SYNC = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC


class ContainerHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def ContainerHello(self, req: empty_pb2.Empty, ctx: CallContext) -> empty_pb2.Empty:
        self.core.task(ctx.task_id)  # only kiln's containers say hello
        return empty_pb2.Empty()

    async def ContainerHeartbeat(
        self, req: api_pb2.ContainerHeartbeatRequest, ctx: CallContext
    ) -> api_pb2.ContainerHeartbeatResponse:
        response = api_pb2.ContainerHeartbeatResponse()
        cancelled = self.core.take_cancellations(ctx.task_id)
        if cancelled:
            response.cancel_input_event.input_ids.extend(cancelled)
        return response

    async def FunctionGetInputs(
        self, req: api_pb2.FunctionGetInputsRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetInputsResponse:
        task = self.core.task(ctx.task_id)
        # The client asserts it never gets more than max(1, batch_max_size) items.
        items = await self.core.next_inputs(
            task.task_id, max(1, req.batch_max_size), req.batch_linger_ms / 1000, _GET_INPUTS_WAIT
        )
        if items is None:
            return api_pb2.FunctionGetInputsResponse(inputs=[api_pb2.FunctionGetInputsItem(kill_switch=True)])
        response = api_pb2.FunctionGetInputsResponse()
        for item in items:
            call = self.core.call(item.call_id)
            message = api_pb2.FunctionInput.FromString(item.payload)
            if task.function.single_use:
                message.final_input = True
            response.inputs.append(
                api_pb2.FunctionGetInputsItem(
                    input_id=item.input_id,
                    input=message,
                    function_call_id=item.call_id,
                    function_call_invocation_type=_ASYNC if call.invocation == Invocation.ASYNC else _SYNC,
                    retry_count=item.retry_count,
                )
            )
        return response

    async def FunctionPutOutputs(
        self, req: api_pb2.FunctionPutOutputsRequest, ctx: CallContext
    ) -> empty_pb2.Empty:
        self.core.put_outputs(ctx.task_id, [(o.input_id, o.retry_count, _result(o)) for o in req.outputs])
        return empty_pb2.Empty()

    async def TaskResult(self, req: api_pb2.TaskResultRequest, ctx: CallContext) -> empty_pb2.Empty:
        # Only sent when import, @enter or lifespan startup fails: no container of it can work.
        self.core.init_failed(
            ctx.task_id, Result(Status.FAILURE, req.result.exception, req.result.SerializeToString())
        )
        return empty_pb2.Empty()

    async def FunctionCallPutDataOut(
        self, req: api_pb2.FunctionCallPutDataRequest, ctx: CallContext
    ) -> empty_pb2.Empty:
        self.core.task(ctx.task_id)
        self.core.put_data_out(
            req.function_call_id,
            [
                # Messages over the size limit for a message travel as blobs.
                DataChunk(
                    c.index,
                    c.data_format,
                    self.core.blobs.read_blob(c.data_blob_id) if c.data_blob_id else c.data,
                )
                for c in req.data_chunks
            ],
        )
        return empty_pb2.Empty()

    async def FunctionCallGetDataIn(
        self, req: api_pb2.FunctionCallGetDataRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.DataChunk]:
        """A web request's messages for the container serving it (the request body, a disconnect)."""
        self.core.task(ctx.task_id)
        call = self.core.call(req.function_call_id)
        last = req.last_index
        deadline = time.monotonic() + _DATA_IN_WAIT
        while time.monotonic() < deadline:
            for chunk in self.core.data_in_after(call, last):
                last = chunk.index
                yield api_pb2.DataChunk(
                    index=chunk.index, data_format=cast(Any, chunk.data_format), data=chunk.data
                )
            if call.unfinished == 0:
                return
            await call.changed.wait(max(0.0, deadline - time.monotonic()))

    async def FunctionGetDynamicConcurrency(
        self, req: api_pb2.FunctionGetDynamicConcurrencyRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetDynamicConcurrencyResponse:
        return api_pb2.FunctionGetDynamicConcurrencyResponse(
            concurrency=req.max_concurrency or req.target_concurrency
        )


def _result(output: api_pb2.FunctionPutOutputsItem) -> Result:
    status = output.result.status
    return Result(
        Status(status) if status in Status._value2member_map_ else Status.FAILURE,
        output.result.exception,
        output.result.SerializeToString(),
        output.data_format,
    )
