"""`Image.run_function`: a Modal function run as an image build step.

The client registers the function (`is_builder_function`) like any other, on the image built so
far, and names it in ImageGetOrCreate. kiln runs it once in a build container: the launcher
boots the client's entrypoint exactly as for a function container, but on a runtime whose
containers write into the new layer's directory and print into the build log. The input carries
`final_input`, so the container exits after it; what the function left on the filesystem (its
mounts are read-only and never copied in) becomes the layer. The function's source, its globals
and its arguments are the layer's key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import pickle
from pathlib import Path
from typing import cast

from modal_proto import api_pb2

from kiln.containers import BubblewrapRuntime, Container, ContainerSpec, OutputSink
from kiln.core.calls import Invocation
from kiln.core.core import Core
from kiln.core.pool import Task
from kiln.errors import ImageBuildError
from kiln.frontends.modal.launcher import ModalLauncher
from kiln.frontends.modal.objects import secret_env
from kiln.ids import new_id
from kiln.images.output import StepOutput
from kiln.images.planner import BuildFunction, LogSink


def build_function_step(core: Core, req: api_pb2.ImageGetOrCreateRequest) -> BuildFunction:
    """The build step for the builder function a request names."""
    definition = req.image.build_function
    function_id = req.build_function_id
    function = core.functions.get(function_id)
    if function is None:
        raise ImageBuildError(f"the build function {function_id} was never created; run the app again")
    function_input = api_pb2.FunctionInput()
    if definition.HasField("input"):
        function_input.CopyFrom(definition.input)
    else:  # no arguments: what the client sends for f()
        function_input.args = pickle.dumps(((), {}))
        function_input.data_format = api_pb2.DATA_FORMAT_PICKLE
    function_input.final_input = True  # the container exits once it has run this input
    identity = {
        "source": _sha(definition.definition.encode()),
        "globals": _sha(definition.globals),
        "arguments": _sha(function_input.SerializeToString(deterministic=True)),
    }

    async def run(parent_key: str, upper: Path, log: LogSink) -> None:
        await _run(core, function_id, function_input, upper, log)

    return BuildFunction(function.tag, identity, run)


async def _run(
    core: Core, function_id: str, function_input: api_pb2.FunctionInput, upper: Path, log: LogSink
) -> None:
    function = core.functions[function_id]
    pool = core.scheduler.pools.get(function_id)
    launcher = core.scheduler.launcher
    if pool is None or not isinstance(launcher, ModalLauncher):
        raise ImageBuildError(
            f"the build function {function.tag} is not running on this server; run the app again"
        )
    output = StepOutput(log, secret_env(core, function.secret_ids))
    runtime = _IntoLayer(core.runtime, upper, output)
    build_launcher = ModalLauncher(
        dataclasses.replace(core, runtime=cast(BubblewrapRuntime, runtime)),
        launcher.registry,
        launcher.handlers,
    )
    task = Task(new_id("ta"), function)
    # The container's RPCs find their task in its function's pool; the pool does not run it.
    pool.tasks[task.task_id] = task
    call = core.calls.create(function_id, function.app_id, Invocation.SYNC, is_map=False)
    try:
        core.calls.put_inputs(call, [(0, function_input.SerializeToString(), "", True)])
        container = await build_launcher.launch(task)
        try:
            status = await asyncio.wait_for(container.wait(), function.timeout)
        except asyncio.TimeoutError:
            await container.kill()
            raise ImageBuildError(
                f"the build function {function.tag} did not finish within its timeout ({function.timeout:.0f} s)"
            ) from None
    finally:
        pool.tasks.pop(task.task_id, None)
        core.calls.cancel(call.call_id, "The image build ended.")
        core.calls.release(call.call_id)
        output.flush()
        await build_launcher.cleanup(task)
        await build_launcher.shutdown()
    result = call.outputs[0].result if call.outputs else None
    if result is None or not result.ok or not status.ok:
        why = (
            result.message
            if result is not None and result.message
            else f"its container ended with {status.describe()}"
        )
        shown = "\n".join(f"  {line}" for line in output.tail) or "  (no output)"
        raise ImageBuildError(
            f"Image build step failed: the build function {function.tag} failed: {why}\n"
            f"Last output:\n{shown}\nFix the function and run again; earlier steps are cached."
        )


class _IntoLayer:
    """A runtime whose containers write into a layer directory and print into the build log."""

    def __init__(self, runtime: BubblewrapRuntime, upper: Path, output: StepOutput) -> None:
        self.runtime = runtime
        self.upper = upper
        self.output = output

    async def start(self, spec: ContainerSpec, sink: OutputSink | None = None) -> Container:
        return await self.runtime.start(dataclasses.replace(spec, upper=self.upper), self.output.write)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
