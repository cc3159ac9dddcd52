"""What the V1 sandbox protocol adds over the same sandboxes: IDs of the client's V1 shape, the
entrypoint's output as text batches resumed by entry ID, numbered stdin writes; and the GPUs a
sandbox holds (placed as a function's are, released when it ends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import pytest
from modal.sandbox._common import _is_v1_sandbox_id
from modal.sandbox._task_command_router_client import _is_v2_task_id

from kiln.containers import ContainerSpec, ExitStatus
from kiln.core.functions import Resources
from kiln.core.gpus import GpuDevice
from kiln.core.placement import Placer
from kiln.core.results import Status
from kiln.core.sandbox_records import new_ids
from kiln.core.sandboxes import Sandboxes, SandboxRuntime
from kiln.core.stdio import OutputLog, StdinPipe
from kiln.errors import ContainerStartError
from kiln.frontends.modal.sandboxes_v1 import _text, utf8_boundary
from kiln.storage.state import StateStore
from kiln.testing import InMemoryRuntime, settle


def test_a_sandbox_created_over_v1_has_ids_the_client_routes_to_v1() -> None:
    for _ in range(200):  # a random task ID ends in "V" one time in 62
        sandbox_id, task_id = new_ids(v1=True)
        assert _is_v1_sandbox_id(sandbox_id) and not _is_v2_task_id(task_id)
    sandbox_id, task_id = new_ids(v1=False)
    assert not _is_v1_sandbox_id(sandbox_id) and _is_v2_task_id(task_id)


def test_a_utf8_character_cut_at_the_end_is_held_back() -> None:
    euro = "€".encode()  # three bytes
    assert utf8_boundary(b"abc") == 3
    assert utf8_boundary(b"ab" + euro[:1]) == 2
    assert utf8_boundary(b"ab" + euro[:2]) == 2
    assert utf8_boundary(b"ab" + euro) == 5
    assert utf8_boundary(b"") == 0
    assert utf8_boundary(b"\x80\x80\x80\x80\x80") == 5  # no UTF-8 at all: nothing to wait for


async def _batches(log: OutputLog, offset: int, wait: float = 0.05) -> list[tuple[int, str]]:
    return [batch async for batch in _text(log, offset, time.monotonic() + wait)]


def test_output_batches_resume_from_their_entry_id_and_end_with_eof() -> None:
    async def scenario() -> None:
        log = OutputLog()
        euro = "€".encode()
        log.append(b"hello " + euro[:1])
        first = await _batches(log, 0)  # time is up with a character cut: it waits for its bytes
        assert first == [(6, "hello ")]
        log.append(euro[1:] + b" world\n")
        assert await _batches(log, first[-1][0]) == [(16, "€ world\n")]
        assert await _batches(log, 9) == [(16, " world\n")]  # any entry ID the server gave
        log.append(b"\xff")
        log.close()
        assert await _batches(log, 16) == [(17, "\ufffd")]  # no UTF-8, and no more bytes to come
        assert await _batches(log, 17) == [(17, "")]  # the end (the client reads `eof` there)

    asyncio.run(scenario())


def test_numbered_stdin_writes_apply_a_resent_one_once() -> None:
    class Writer:
        data = b""

        def write(self, data: bytes) -> None:
            self.data += data

        async def drain(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def scenario() -> None:
        writer = Writer()
        stdin = StdinPipe(writer)
        await stdin.write_once("key-1", b"ab", False)
        await stdin.write_once("key-1", b"ab", False)  # its answer was lost: the client re-sends it
        await stdin.write_once("key-2", b"cd", True)
        assert writer.data == b"abcd" and stdin.closed

    asyncio.run(scenario())


def _runtime(runtime: InMemoryRuntime) -> SandboxRuntime:
    # Its containers run nothing: no exec server will find a process in them (nor is one asked for).
    return cast(SandboxRuntime, runtime)


def _placer(count: int) -> Placer:
    return Placer(detect=lambda: [GpuDevice(i, "NVIDIA H100 80GB HBM3") for i in range(count)])


def test_a_sandbox_holds_its_gpus_until_it_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        sandboxes = Sandboxes(StateStore(tmp_path / "state.sqlite3"), placer=_placer(3))
        runtime = InMemoryRuntime()
        two = Resources(gpu_type="H100", gpu_count=2)

        async def create(resources: Resources) -> str:
            spec = ContainerSpec(image=[], argv=["sleep"])
            sandbox = await sandboxes.create(
                _runtime(runtime), spec, app_id="ap-a", environment="", resources=resources
            )
            return sandbox.sandbox_id

        first = await create(two)
        assert runtime.started[-1].spec.gpus == [0, 1]
        with pytest.raises(ContainerStartError, match="in use"):
            await create(two)  # one H100 is left: the sandbox is refused, and holds nothing
        second = await create(Resources(gpu_type="H100", gpu_count=1))
        assert runtime.started[-1].spec.gpus == [2]
        assert (await create(Resources())) and runtime.started[-1].spec.gpus == []
        await sandboxes.terminate(first)
        await create(two)
        assert runtime.started[-1].spec.gpus == [0, 1]  # released when the first one ended
        runtime.started[1].exit(ExitStatus(code=0, signal=None))  # the second ends by itself
        await settle()
        await create(Resources(gpu_type="H100", gpu_count=1))
        assert runtime.started[-1].spec.gpus == [2]
        assert sandboxes.info(second).result is not None
        await sandboxes.shutdown()

    asyncio.run(scenario())


def test_a_sandbox_refused_for_want_of_gpus_says_so_in_its_record(tmp_path: Path) -> None:
    async def scenario() -> None:
        sandboxes = Sandboxes(StateStore(tmp_path / "state.sqlite3"), placer=_placer(0))
        with pytest.raises(ContainerStartError):
            await sandboxes.create(
                _runtime(InMemoryRuntime()), ContainerSpec(image=[], argv=["sleep"]), app_id="ap-a", environment="",
                resources=Resources(gpu_type="H100", gpu_count=1),
            )  # fmt: skip
        (info,) = sandboxes.list(app_id="ap-a", include_finished=True)
        assert info.result is not None and info.result.status == Status.INIT_FAILURE

    asyncio.run(scenario())
