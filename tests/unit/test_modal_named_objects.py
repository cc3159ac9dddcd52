"""How the Modal frontend reads `*GetOrCreate`'s creation types and environments."""

from __future__ import annotations

from pathlib import Path

import pytest
from modal_proto import api_pb2

from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.modal.dispatch import AlreadyExists, CallContext
from kiln.frontends.modal.named_objects import get_or_create
from kiln.storage.dicts import Dicts
from kiln.storage.named import Lifetime
from tests.unit.test_core_restore import new_core, run

FIX = "Create it with the fix."


def test_creation_types(tmp_path: Path) -> None:
    async def main() -> None:
        core, _ = new_core(tmp_path)
        dicts: Dicts = core.dicts
        user = CallContext()

        def ask(name: str, creation: int, environment: str = "") -> str:
            return get_or_create(core, dicts, user, name, environment, creation, FIX).object_id

        with pytest.raises(NotFound, match="Create it with the fix"):
            ask("d", api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED)
        made = ask("d", api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING)
        assert ask("d", api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED) == made
        assert ask("d", api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED, "main") == made  # "" is "main"
        with pytest.raises(NotFound):
            ask("d", api_pb2.OBJECT_CREATION_TYPE_UNSPECIFIED, "dev")
        with pytest.raises(AlreadyExists):
            ask("d", api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS)
        replaced = ask("d", api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS)
        assert replaced != made and dicts.find(made) is None
        ephemeral = ask("", api_pb2.OBJECT_CREATION_TYPE_EPHEMERAL)
        assert dicts.info(ephemeral).lifetime is Lifetime.EPHEMERAL
        with pytest.raises(InvalidRequest, match="from a container"):
            ask("", api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP)
        with pytest.raises(InvalidRequest, match="needs a name"):
            ask("", api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING)
        await core.shutdown()

    run(main)
