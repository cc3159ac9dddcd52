"""fal's queue host at start, on a real core and a real store: which stored requests run again,
which end with their app, and what a caller's cancel and a stopping server leave on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kiln.auth import Credentials
from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.frontends.fal.keys import FalAuth
from kiln.frontends.fal.queue import FalQueue
from kiln.frontends.fal.routes import FalRoutes
from kiln.gateway.proxy import Upstream
from kiln.storage.fal_requests import COMPLETED, IN_PROGRESS, IN_QUEUE, FalRequest, FalRequests, FalResponse
from kiln.storage.state import StateStore
from tests.unit.test_core_restore import function, new_core


def app_with(core: Core, name: str, function_id: str, state: AppState) -> None:
    app = core.create_app(name, state, "main", frontend="toy")
    core.register_function(function(function_id, app.app_id, name))
    core.publish_app(app.app_id, name=name, state=state, function_ids={name: function_id}, class_ids={})


def test_a_deployed_apps_requests_run_again_in_order_and_the_others_end_saying_why(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app_with(core, "deployed", "fu-d", AppState.DEPLOYED)
        app_with(core, "ran", "fu-e", AppState.EPHEMERAL)  # a `fal run` the restart ended
        state = StateStore(core.config.state_db)  # the core's database, as `kiln server` shares it
        store = FalRequests(state, tmp_path / "fal-requests")
        for request_id, function_id in [("rq-1", "fu-d"), ("rq-2", "fu-e"), ("rq-3", "fu-gone"),
                                        ("rq-4", "fu-d"), ("rq-5", "fu-e")]:  # fmt: skip
            app = {"fu-d": "deployed", "fu-e": "ran"}.get(function_id, "deleted")
            store.add(FalRequest(request_id, function_id, f"kiln/{app}", "/", "POST", []), b"{}")
        store.set_status("rq-1", IN_PROGRESS)  # interrupted mid-run
        store.finish("rq-5", FalResponse(200, [], b'{"done": 5}'))  # finished before the restart

        auth = FalAuth(Credentials.load_or_create(tmp_path), state)
        queue = FalQueue(core, FalRoutes("https://run", "https://queue"), Upstream(), auth, store)
        assert queue.restore() == (2, 2)
        assert [(r.record.request_id, r.record.status) for r in queue.live.values()] == [
            ("rq-1", IN_QUEUE),
            ("rq-4", IN_QUEUE),
        ]
        assert [queue._position(r.record) for r in queue.live.values()] == [0, 1]
        ran, gone = store.response("rq-2"), store.response("rq-3")
        assert ran is not None and ran.status == 410 and "`fal run` of kiln/ran" in ran.error
        assert gone is not None and gone.status == 410 and "kiln/deleted was deleted or stopped" in gone.error
        assert store.response("rq-5") == FalResponse(200, [], b'{"done": 5}')

        await asyncio.sleep(0)  # rq-1 reads its body; rq-4 waits for its turn behind it
        waiting = queue.live["rq-4"]
        waiting.cancelled = True  # what PUT …/cancel does
        assert waiting.work is not None
        waiting.work.cancel()
        await queue.shutdown()  # and the server stops: it leaves rq-1 for the next one
        assert [(r.request_id, r.status) for r in store.unfinished()] == [("rq-1", IN_QUEUE)]
        cancelled = store.get("rq-4")
        assert cancelled is not None and cancelled.status == COMPLETED and cancelled.response_status == 499
        await core.shutdown()

    asyncio.run(main())
