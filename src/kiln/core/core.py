"""The core's state in one object that frontends hold: apps, calls, scheduling, and the stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.config import Config
from kiln.containers import BubblewrapRuntime
from kiln.core.apps import Apps
from kiln.core.calls import Calls
from kiln.core.functions import FunctionDef
from kiln.core.pool import Scheduler
from kiln.images.client_deps import ClientDeps
from kiln.images.service import ImageService
from kiln.storage.blobs import BlobStore
from kiln.storage.mounts import MountStore
from kiln.storage.state import StateStore


@dataclass
class Core:
    config: Config
    state: StateStore
    blobs: BlobStore
    mounts: MountStore
    images: ImageService
    client_deps: ClientDeps
    runtime: BubblewrapRuntime
    apps: Apps
    calls: Calls
    scheduler: Scheduler
    functions: dict[str, FunctionDef] = field(default_factory=dict)
    http_url: str = ""  # where blob uploads and downloads go

    def register_function(self, function: FunctionDef) -> None:
        self.functions[function.function_id] = function
        self.scheduler.register(function)
