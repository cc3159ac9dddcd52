"""The container's side: the RPCs `modal._container_entrypoint` makes from inside a sandbox.

Each container talks over its own unix socket, so `ctx.task_id` always names the caller.
"""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from kiln.core.calls import DataChunk, Invocation
from kiln.core.core import Core
from kiln.core.pool import Pool, Task
from kiln.core.results import Result, Status
from kiln.errors import InvalidRequest
from kiln.frontends.modal.dispatch import CallContext

_GET_INPUTS_WAIT = 20.0  # the client has no deadline here; answer empty now and then so it re-asks
_ASYNC = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC
_SYNC = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC


class ContainerHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _find(self, ctx: CallContext) -> tuple[Pool, Task]:
        found = self.core.scheduler.find(ctx.task_id) if ctx.task_id else None
        if found is None:
            raise InvalidRequest("this RPC is only for kiln's containers")
        return found

    def _task(self, ctx: CallContext) -> Task:
        return self._find(ctx)[1]

    async def ContainerHello(self, req: empty_pb2.Empty, ctx: CallContext) -> empty_pb2.Empty:
        self._task(ctx)  # only kiln's containers say hello
        return empty_pb2.Empty()

    async def ContainerHeartbeat(
        self, req: api_pb2.ContainerHeartbeatRequest, ctx: CallContext
    ) -> api_pb2.ContainerHeartbeatResponse:
        pool, task = self._find(ctx)
        response = api_pb2.ContainerHeartbeatResponse()
        cancelled = pool.take_cancellations(task)
        if cancelled:
            response.cancel_input_event.input_ids.extend(cancelled)
        return response

    async def FunctionGetInputs(
        self, req: api_pb2.FunctionGetInputsRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetInputsResponse:
        pool, task = self._find(ctx)
        # The client asserts it never gets more than max(1, batch_max_size) items.
        items = await pool.next_inputs(
            task, max(1, req.batch_max_size), req.batch_linger_ms / 1000, _GET_INPUTS_WAIT
        )
        if items is None:
            return api_pb2.FunctionGetInputsResponse(inputs=[api_pb2.FunctionGetInputsItem(kill_switch=True)])
        response = api_pb2.FunctionGetInputsResponse()
        for item in items:
            call = self.core.calls.get(item.call_id)
            message = api_pb2.FunctionInput.FromString(item.payload)
            if task.function.single_use:
                message.final_input = True
            response.inputs.append(
                api_pb2.FunctionGetInputsItem(
                    input_id=item.input_id,
                    input=message,
                    function_call_id=item.call_id,
                    function_call_invocation_type=_ASYNC
                    if call and call.invocation == Invocation.ASYNC
                    else _SYNC,
                    retry_count=item.retry_count,
                )
            )
        return response

    async def FunctionPutOutputs(
        self, req: api_pb2.FunctionPutOutputsRequest, ctx: CallContext
    ) -> empty_pb2.Empty:
        pool, task = self._find(ctx)
        pool.put_outputs(task, [(o.input_id, o.retry_count, _result(o)) for o in req.outputs])
        return empty_pb2.Empty()

    async def TaskResult(self, req: api_pb2.TaskResultRequest, ctx: CallContext) -> empty_pb2.Empty:
        task = self._task(ctx)
        # Only sent when import, @enter or lifespan startup fails: no container of it can work.
        task.failure = Result(Status.FAILURE, req.result.exception, req.result.SerializeToString())
        return empty_pb2.Empty()

    async def FunctionCallPutDataOut(
        self, req: api_pb2.FunctionCallPutDataRequest, ctx: CallContext
    ) -> empty_pb2.Empty:
        self._task(ctx)
        self.core.calls.put_data_out(
            req.function_call_id,
            [DataChunk(c.index, c.data_format, c.data) for c in req.data_chunks],
        )
        return empty_pb2.Empty()

    async def FunctionGetDynamicConcurrency(
        self, req: api_pb2.FunctionGetDynamicConcurrencyRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetDynamicConcurrencyResponse:
        return api_pb2.FunctionGetDynamicConcurrencyResponse(
            concurrency=req.max_concurrency or req.target_concurrency
        )

    async def ContainerStop(
        self, req: api_pb2.ContainerStopRequest, ctx: CallContext
    ) -> api_pb2.ContainerStopResponse:
        found = self.core.scheduler.find(req.task_id or ctx.task_id)
        if found is not None:
            pool, task = found
            pool.drain(task)
        return api_pb2.ContainerStopResponse()


def _result(output: api_pb2.FunctionPutOutputsItem) -> Result:
    status = output.result.status
    return Result(
        Status(status) if status in Status._value2member_map_ else Status.FAILURE,
        output.result.exception,
        output.result.SerializeToString(),
        output.data_format,
    )
