"""A fal app's URL after a restart, on a real core: a deployed app has it back; a `fal run` of
the same name, whose client went with the old server, does not take it over."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kiln.auth import Credentials
from kiln.core.apps import AppState
from kiln.core.functions import FunctionRecord
from kiln.frontends.fal.keys import FalAuth
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.fal.service import FalFrontend
from kiln.storage.state import StateStore
from tests.unit.test_core_restore import new_core


def test_only_a_deployed_app_gets_its_url_back_after_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        core, runtime = new_core(tmp_path)
        routes = FalRoutes("https://run", "https://queue")
        auth = FalAuth(Credentials.load_or_create(tmp_path), StateStore(core.config.state_db))
        fal = FalFrontend(core, runtime, routes, auth)
        definition = RunnerDefinition(name="hello", image_id="im-1", function=b"").to_bytes()
        for function_id, state in (("fu-deployed", AppState.DEPLOYED), ("fu-ran", AppState.EPHEMERAL)):
            app = core.create_app("hello", state, "main", frontend="fal")
            fal.restore_function(FunctionRecord(function_id, app.app_id, "fal", definition))
        found = routes.find("/kiln/hello/")
        assert found is not None and found[0].function_id == "fu-deployed"
        await core.shutdown()

    asyncio.run(main())
