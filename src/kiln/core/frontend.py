"""The frontend seam: what the core needs from each protocol frontend it serves.

A frontend translates its client's protocol into core calls. The core, in turn, asks it for two
things: how to boot a container for one of its functions (its `launcher`), and how to rebuild a
function or class from the opaque bytes it registered them with (after a restart, a rollback).
"""

from __future__ import annotations

from typing import Protocol

from kiln.core.functions import FunctionDef, FunctionRecord
from kiln.core.pool import Launcher


class Frontend(Protocol):
    @property
    def name(self) -> str:
        """Unique among the server's frontends; recorded with every app and function."""
        ...

    @property
    def launcher(self) -> Launcher: ...

    def restore_function(self, record: FunctionRecord) -> FunctionDef:
        """The FunctionDef for a record this frontend registered (and its own state for it)."""
        ...

    def restore_class(self, class_id: str, app_id: str, meta: bytes) -> None: ...
