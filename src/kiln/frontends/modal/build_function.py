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
import hashlib
import pickle
from pathlib import Path

from modal_proto import api_pb2

from kiln.core.calls import Invocation
from kiln.core.core import Core
from kiln.errors import ImageBuildError, NotFound
from kiln.frontends.modal.launcher import ModalLauncher
from kiln.images.output import StepOutput
from kiln.images.planner import BuildFunction, LogSink


def build_function_step(
    core: Core, launcher: ModalLauncher, req: api_pb2.ImageGetOrCreateRequest
) -> BuildFunction:
    """The build step for the builder function a request names."""
    definition = req.image.build_function
    function_id = req.build_function_id
    try:
        function = core.function(function_id)
    except NotFound:
        raise ImageBuildError(
            f"the build function {function_id} was never created; run the app again"
        ) from None
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
        await _run(core, launcher, function_id, function_input, upper, log)

    return BuildFunction(function.tag, identity, run)


async def _run(
    core: Core,
    launcher: ModalLauncher,
    function_id: str,
    function_input: api_pb2.FunctionInput,
    upper: Path,
    log: LogSink,
) -> None:
    function = core.function(function_id)
    output = StepOutput(log, core.secrets.env_of(function.secret_ids))
    # The container's RPCs find their task in its function's pool; the pool does not run it.
    task = core.attach_task(function_id)
    call = core.start_call(function_id, Invocation.SYNC, is_map=False)
    try:
        core.put_inputs(call, [(0, function_input.SerializeToString(), "", True)])
        container = await launcher.launch(task, upper=upper, sink=output.write)
        try:
            status = await asyncio.wait_for(container.wait(), function.timeout)
        except asyncio.TimeoutError:
            await container.kill()
            raise ImageBuildError(
                f"the build function {function.tag} did not finish within its timeout ({function.timeout:.0f} s)"
            ) from None
    finally:
        core.detach_task(task)
        core.cancel_call(call.call_id)
        core.release_call(call.call_id)
        output.flush()
        await launcher.cleanup(task)
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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
