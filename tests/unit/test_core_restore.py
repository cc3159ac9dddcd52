"""The core across a crash, on kiln.testing's in-memory runtime: what was acknowledged comes back.

Each test runs a Core, "kills" it (its journal is left as it was; nothing is closed), and starts
a second Core on the same state database, as `kiln server` does on the same KILN_HOME.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.core.apps import AppState
from kiln.core.calls import Invocation
from kiln.core.core import Core
from kiln.core.functions import FunctionDef, FunctionRecord
from kiln.core.results import Result, Status
from kiln.core.schedules import Period, Schedule
from kiln.images.base import BaseResolver
from kiln.images.builder import Builder
from kiln.images.layer_store import LayerStore
from kiln.images.service import ImageService
from kiln.storage.blobs import BlobStore
from kiln.storage.mounts import MountStore
from kiln.storage.state import StateStore
from kiln.testing import InMemoryRuntime, RuntimeLauncher, settle


@dataclass
class ToyFrontend:
    """The smallest real frontend: its functions' definitions are their tags, and a meta of
    `every:N` schedules them every N seconds."""

    launcher: RuntimeLauncher
    name: str = "toy"

    def restore_function(self, record: FunctionRecord) -> FunctionDef:
        restored = function(record.function_id, record.app_id, record.definition.decode())
        if record.meta.startswith(b"every:"):
            restored.schedule = Schedule(period=Period(seconds=float(record.meta[6:])))
        return restored

    def restore_class(self, class_id: str, app_id: str, meta: bytes) -> None:
        pass


def function(function_id: str, app_id: str, tag: str) -> FunctionDef:
    return FunctionDef(function_id, app_id, tag, frontend="toy", definition=tag.encode())


def new_core(home: Path, **config: Any) -> tuple[Core, InMemoryRuntime]:
    settings = Config(home=home, **config)
    state = StateStore(settings.state_db)
    blobs = BlobStore(settings.blobs_dir)
    runtime = InMemoryRuntime()
    builder = Builder(LayerStore(settings.layers_dir), runtime, BaseResolver(home), home / "scratch")
    core = Core(
        settings, state, blobs, MountStore(state, blobs, settings.mounts_dir), ImageService(builder, state)
    )
    core.add_frontend(ToyFrontend(RuntimeLauncher(runtime)))
    core.start()
    return core, runtime


async def serve_one(core: Core, runtime: InMemoryRuntime, answer: Callable[[bytes], bytes]) -> str:
    """Act as the newest container: take one input and answer it. Returns the input's ID."""
    await settle()
    task = core.tasks()[-1]
    items = await core.next_inputs(task.task_id, 1, 0.0, 0.0)
    assert items
    (item,) = items
    core.put_outputs(task.task_id, [(item.input_id, 0, Result(Status.SUCCESS, payload=answer(item.payload)))])
    return item.input_id


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_a_deployed_app_serves_again_after_a_crash(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("svc", AppState.DEPLOYED, "main", frontend="toy")
        core.register_function(function("fu-a", app.app_id, "f"))
        core.publish_app(
            app.app_id, name="svc", state=AppState.DEPLOYED, function_ids={"f": "fu-a"}, class_ids={}
        )
        await core.shutdown()  # as killed: nothing more is written

        again, runtime = new_core(tmp_path)
        restored = again.deployed_app("svc", "main")
        assert restored is not None and restored.app_id == app.app_id
        assert restored.function_ids == {"f": "fu-a"} and restored.version == 1
        call = again.start_call("fu-a", Invocation.SYNC, is_map=False)
        again.put_inputs(call, [(0, b"x", "", False)])
        await serve_one(again, runtime, lambda payload: payload * 2)
        assert [o.result.payload for o in call.outputs] == [b"xx"]
        await again.shutdown()

    run(main)


def test_inputs_acknowledged_before_a_crash_run_once_and_finished_ones_are_not_run_again(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        core, runtime = new_core(tmp_path)
        app = core.create_app("job", AppState.DETACHED, frontend="toy")
        core.register_function(function("fu-b", app.app_id, "g"))
        call = core.start_call("fu-b", Invocation.ASYNC, is_map=True)
        core.put_inputs(call, [(i, str(i).encode(), "", False) for i in range(3)])
        done = await serve_one(core, runtime, lambda p: b"r" + p)
        await core.shutdown()

        again, runtime = new_core(tmp_path)
        restored = again.call(call.call_id)
        assert [o.input_id for o in restored.outputs] == [done]
        served = [await serve_one(again, runtime, lambda p: b"r" + p) for _ in range(2)]
        assert done not in served
        assert sorted(o.result.payload for o in restored.outputs) == [b"r0", b"r1", b"r2"]
        assert restored.unfinished == 0
        await again.shutdown()

    run(main)


def test_a_finished_spawned_call_keeps_its_result_across_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        core, runtime = new_core(tmp_path)
        app = core.create_app("job", AppState.DEPLOYED, frontend="toy")
        core.register_function(function("fu-c", app.app_id, "h"))
        call = core.start_call("fu-c", Invocation.ASYNC, is_map=False)
        core.put_inputs(call, [(0, b"q", "", False)])
        await serve_one(core, runtime, lambda p: p.upper())
        core.release_call(call.call_id)  # the caller read it once
        await core.shutdown()

        again, _ = new_core(tmp_path)
        assert [o.result.payload for o in again.call(call.call_id).outputs] == [b"Q"]
        await again.shutdown()

    run(main)


def test_an_ephemeral_app_whose_client_is_gone_is_stopped_after_the_heartbeat_grace(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("run", AppState.EPHEMERAL, frontend="toy")
        core.register_function(function("fu-d", app.app_id, "k"))
        call = core.start_call("fu-d", Invocation.SYNC, is_map=False)
        core.put_inputs(call, [(0, b"", "", False)])
        await core.shutdown()

        again, _ = new_core(tmp_path, heartbeat_grace=30.0)
        assert again.app(app.app_id).running  # its client may still be there: it gets the grace
        await again.stop_orphaned_apps(now=asyncio.get_running_loop().time() + 10**6)
        assert again.app(app.app_id).state == AppState.STOPPED
        (output,) = again.call(call.call_id).outputs
        assert output.result.status == Status.TERMINATED
        await again.shutdown()

    run(main)


def test_a_rollback_serves_the_earlier_definition_and_survives_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("svc", AppState.DEPLOYED, frontend="toy")
        for tag in ("v1", "v2"):
            core.register_function(function("fu-e", app.app_id, tag))
            core.publish_app(
                app.app_id, name="svc", state=AppState.DEPLOYED, function_ids={"f": "fu-e"}, class_ids={}
            )
        assert core.function("fu-e").tag == "v2"
        deployment = core.rollback(app.app_id, 1)
        assert (deployment.version, deployment.rollback_of) == (3, 1)
        assert core.function("fu-e").tag == "v1"
        assert [d.version for d in core.app_history(app.app_id)] == [3, 2, 1]
        await core.shutdown()

        again, _ = new_core(tmp_path)
        assert again.function("fu-e").tag == "v1"
        await again.shutdown()

    run(main)


def test_runtime_autoscaler_changes_survive_a_restart_and_a_new_deploy_clears_them(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("svc", AppState.DEPLOYED, frontend="toy")
        core.register_function(function("fu-f", app.app_id, "v1"))
        core.update_autoscaler("fu-f", {"max_containers": 3, "scaledown_window": 7.0})
        await core.shutdown()

        again, _ = new_core(tmp_path)
        view = again.autoscaler("fu-f")
        assert (view.settings.max_containers, view.settings.scaledown_window) == (3, 7.0)
        again.register_function(function("fu-f", app.app_id, "v2"))  # redeployed
        assert again.autoscaler("fu-f").overrides == {}
        await again.shutdown()

        third, _ = new_core(tmp_path)
        assert third.autoscaler("fu-f").overrides == {}
        await third.shutdown()

    run(main)


def test_a_deployed_schedule_fires_on_time_once_per_period_and_across_a_restart(tmp_path: Path) -> None:
    def scheduled(app_id: str) -> FunctionDef:
        return FunctionDef(
            "fu-s",
            app_id,
            "tick",
            frontend="toy",
            definition=b"tick",
            schedule=Schedule(period=Period(seconds=10)),
        )

    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("cron", AppState.DEPLOYED, frontend="toy")
        core.register_function(scheduled(app.app_id), meta=b"every:10")
        published = core.publish_app(
            app.app_id, name="cron", state=AppState.DEPLOYED, function_ids={"tick": "fu-s"}, class_ids={}
        )
        (deployment,) = core.app_history(published.app_id)
        t0 = deployment.deployed_at
        assert core.fire_due_schedules(t0 + 5) == []
        (first,) = core.fire_due_schedules(t0 + 10)
        assert first.invocation == Invocation.ASYNC and first.num_inputs == 1
        assert core.fire_due_schedules(t0 + 12) == []
        await core.shutdown()

        again, _ = new_core(tmp_path)
        assert again.fire_due_schedules(t0 + 15) == []  # its last run is remembered
        assert len(again.fire_due_schedules(t0 + 20)) == 1
        await again.shutdown()

    run(main)


def test_an_ephemeral_app_does_not_fire_its_schedules(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("run", AppState.EPHEMERAL, frontend="toy")
        function = FunctionDef(
            "fu-t", app.app_id, "t", frontend="toy", schedule=Schedule(period=Period(seconds=1))
        )
        core.register_function(function)
        core.publish_app(app.app_id, name="", state=None, function_ids={"t": "fu-t"}, class_ids={})
        assert core.fire_due_schedules(10**10) == []
        await core.shutdown()

    run(main)
