"""The core keeps its storage rooms tidy: objects an app owned go when it stops."""

from __future__ import annotations

from pathlib import Path

from kiln.core.apps import AppState
from tests.unit.test_core_restore import new_core, run


def test_stopping_an_app_deletes_the_dicts_and_queues_it_owned_and_only_those(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        app = core.create_app("run", AppState.EPHEMERAL, "main", frontend="toy")
        other = core.create_app("other", AppState.EPHEMERAL, "main", frontend="toy")
        owned_dict = core.dicts.create_for_app("main", app.app_id)
        owned_queue = core.queues.create_for_app("main", app.app_id)
        kept_dict = core.dicts.create_for_app("main", other.app_id)
        named_queue, _ = core.queues.create("jobs", "main")
        core.queues.put(owned_queue.object_id, [b"x"])
        await core.stop_app(app.app_id)
        assert core.dicts.find(owned_dict.object_id) is None
        assert core.queues.find(owned_queue.object_id) is None
        assert core.dicts.find(kept_dict.object_id) is not None
        assert core.queues.find(named_queue.object_id) is not None
        await core.shutdown()

    run(main)
