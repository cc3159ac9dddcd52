"""The caller's side of calls: FunctionMap, inputs, outputs, generator data, cancellation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from modal_proto import api_pb2

from kiln.core.calls import MAX_RETRY_DELAY, FunctionCall, Invocation, Output
from kiln.core.core import Core
from kiln.core.functions import RetryPolicy
from kiln.core.results import Result
from kiln.frontends.modal.dispatch import CallContext, empty, long_poll

_MAP = api_pb2.FUNCTION_CALL_TYPE_MAP
_ASYNC = api_pb2.FUNCTION_CALL_INVOCATION_TYPE_ASYNC
_MAX_INPUTS_OUTSTANDING = 1000
MAP_OUTPUT_LINGER = 0.01  # seconds


def input_jwt(idx: int, input_id: str) -> str:
    """An unsigned JWT-shaped token: the client decodes its payload (for `idx`) without verifying it."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'idx': idx, 'input_id': input_id})}."


def to_generic_result(result: Result) -> api_pb2.GenericResult:
    if result.payload:
        return api_pb2.GenericResult.FromString(result.payload)
    return api_pb2.GenericResult(status=cast(Any, int(result.status)), exception=result.message)


class CallHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _call(self, call_id: str) -> FunctionCall:
        return self.core.call(call_id)

    async def FunctionMap(
        self, req: api_pb2.FunctionMapRequest, ctx: CallContext
    ) -> api_pb2.FunctionMapResponse:
        invocation = Invocation.ASYNC if req.function_call_invocation_type == _ASYNC else Invocation.SYNC
        call = self.core.start_call(req.function_id, invocation, req.function_call_type == _MAP)
        response = api_pb2.FunctionMapResponse(
            function_call_id=call.call_id,
            function_call_jwt=input_jwt(-1, call.call_id),
            retry_policy=retry_policy_to_proto(call.retry),
            sync_client_retries_enabled=False,  # kiln retries failed inputs itself
            max_inputs_outstanding=_MAX_INPUTS_OUTSTANDING,
        )
        if req.pipelined_inputs:
            response.pipelined_inputs.extend(self._put(call, list(req.pipelined_inputs)))
        return response

    async def FunctionPutInputs(
        self, req: api_pb2.FunctionPutInputsRequest, ctx: CallContext
    ) -> api_pb2.FunctionPutInputsResponse:
        return api_pb2.FunctionPutInputsResponse(
            inputs=self._put(self._call(req.function_call_id), list(req.inputs))
        )

    def _put(
        self, call: FunctionCall, items: list[api_pb2.FunctionPutInputsItem]
    ) -> list[api_pb2.FunctionPutInputsResponseItem]:
        created = self.core.put_inputs(
            call,
            [
                (item.idx, item.input.SerializeToString(), item.input.method_name, item.input.final_input)
                for item in items
            ],
        )
        return [
            api_pb2.FunctionPutInputsResponseItem(
                idx=i.idx, input_id=i.input_id, input_jwt=input_jwt(i.idx, i.input_id)
            )
            for i in created
        ]

    async def FunctionFinishInputs(
        self, req: api_pb2.FunctionFinishInputsRequest, ctx: CallContext
    ) -> object:
        self._call(req.function_call_id)
        return empty()

    async def FunctionCallFromId(
        self, req: api_pb2.FunctionCallFromIdRequest, ctx: CallContext
    ) -> api_pb2.FunctionCallFromIdResponse:
        call = self._call(req.function_call_id)
        return api_pb2.FunctionCallFromIdResponse(function_call_id=call.call_id, num_inputs=call.num_inputs)

    async def FunctionGetOutputs(
        self, req: api_pb2.FunctionGetOutputsRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetOutputsResponse:
        call = self._call(req.function_call_id)
        cursor, _ = long_poll(req.last_entry_id, req.timeout)
        timeout = min(max(req.timeout, 0.0), 55.0)
        # A map's outputs arrive in a stream: gather a few milliseconds' worth per reply, which
        # saves the server and the client an RPC per output.
        linger = MAP_OUTPUT_LINGER if call.is_map and not (req.start_idx or req.end_idx) else 0.0
        outputs = await self.core.wait_outputs(call, cursor, timeout, linger)
        if req.start_idx or req.end_idx:
            outputs = [o for o in call.outputs if req.start_idx <= o.idx <= req.end_idx]
            new_cursor = cursor
        else:
            new_cursor = cursor + len(outputs)
        if req.max_values:
            outputs = outputs[: req.max_values]
            if not (req.start_idx or req.end_idx):
                new_cursor = cursor + len(outputs)
        response = api_pb2.FunctionGetOutputsResponse(
            outputs=[self._output(o) for o in outputs],
            last_entry_id=str(new_cursor),
            num_unfinished_inputs=call.unfinished,
        )
        if (
            req.clear_on_success
            and call.unfinished == 0
            and (not call.is_map or timeout == 0)
            and new_cursor >= len(call.outputs)
        ):
            # The caller has everything: forget the call (spawned calls keep their results).
            self.core.release_call(call.call_id)
        return response

    def _output(self, output: Output) -> api_pb2.FunctionGetOutputsItem:
        return api_pb2.FunctionGetOutputsItem(
            result=to_generic_result(output.result),
            idx=output.idx,
            input_id=output.input_id,
            data_format=cast(Any, output.result.data_format),
            task_id=output.task_id,
            input_started_at=output.started_at,
            output_created_at=output.created_at,
            retry_count=output.retry_count,
        )

    async def FunctionCallGetDataOut(
        self, req: api_pb2.FunctionCallGetDataRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.DataChunk]:
        call = self._call(req.function_call_id)
        last = req.last_index
        deadline = time.monotonic() + 55.0
        while time.monotonic() < deadline:
            for chunk in self.core.data_out_after(call, last):
                last = chunk.index
                yield api_pb2.DataChunk(
                    index=chunk.index, data_format=cast(Any, chunk.data_format), data=chunk.data
                )
            if call.unfinished == 0 and call.outputs:
                return
            await call.changed.wait(max(0.0, deadline - time.monotonic()))

    async def FunctionCallCancel(self, req: api_pb2.FunctionCallCancelRequest, ctx: CallContext) -> object:
        self.core.cancel_call(req.function_call_id, terminate=req.terminate_containers)
        return empty()


def retry_policy_to_proto(policy: RetryPolicy) -> api_pb2.FunctionRetryPolicy:
    return api_pb2.FunctionRetryPolicy(
        retries=policy.retries,
        backoff_coefficient=policy.backoff_coefficient,
        initial_delay_ms=round(policy.initial_delay * 1000),
        max_delay_ms=round(policy.max_delay * 1000),
    )


def retry_policy_from_proto(policy: api_pb2.FunctionRetryPolicy) -> RetryPolicy:
    """The core's policy (delays in seconds; Modal clamps each delay to [1 s, 24 h] when used)."""
    return RetryPolicy(
        retries=policy.retries,
        backoff_coefficient=policy.backoff_coefficient or 1.0,
        initial_delay=policy.initial_delay_ms / 1000,
        max_delay=min(policy.max_delay_ms / 1000, MAX_RETRY_DELAY)
        if policy.max_delay_ms
        else MAX_RETRY_DELAY,
    )
