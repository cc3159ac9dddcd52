"""The core's state in one object that frontends hold: apps, calls, scheduling, and the stores."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from kiln.config import Config
from kiln.containers import BubblewrapRuntime
from kiln.core import gpus
from kiln.core.apps import App, Apps, AppState
from kiln.core.calls import Calls
from kiln.core.functions import FunctionDef, Resources
from kiln.core.gpus import GpuDevice
from kiln.core.pool import Scheduler
from kiln.core.results import Result, Status
from kiln.errors import ContainerStartError, InvalidRequest
from kiln.images.client_deps import ClientDeps
from kiln.images.service import ImageService
from kiln.storage.blobs import BlobStore
from kiln.storage.mounts import MountStore
from kiln.storage.state import StateStore
from kiln.streams import INFO

log = logging.getLogger("kiln")

# An ephemeral app whose client stopped sending heartbeats (every 15 s) for this long is stopped.
HEARTBEAT_GRACE = 60.0
_KEEP_RUNNING = {AppState.DEPLOYED, AppState.DETACHED}


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
    gpus: list[GpuDevice] | None = None  # detected on first use
    gpus_in_use: set[int] = field(default_factory=set)
    http_url: str = ""  # where blob uploads and downloads go

    def register_function(self, function: FunctionDef) -> None:
        """Make a function callable. A GPU request this machine cannot serve is refused here,
        when the app is created, rather than when its first input waits forever."""
        self.check_gpu(function)
        self.functions[function.function_id] = function
        self.scheduler.register(function)

    def gpu_available(self, wanted: Resources) -> bool:
        """Whether this machine has GPUs for the request (True when none is asked for)."""
        if not wanted.gpu_type:
            return True
        try:
            gpus.validate(wanted.gpu_type, wanted.gpu_count or 1)
        except InvalidRequest:
            return False
        if self.gpus is None:
            self.gpus = gpus.detect_gpus()
        return gpus.capacity(wanted.gpu_type, wanted.gpu_count or 1, self.gpus) > 0

    def allocate_gpus(self, wanted: Resources) -> list[int]:
        """Reserve GPUs for a container (released with `release_gpus`)."""
        if not wanted.gpu_type:
            return []
        chosen = gpus.choose_devices(
            wanted.gpu_type, wanted.gpu_count or 1, self.gpus or [], self.gpus_in_use
        )
        if chosen is None:
            request = gpus.describe(wanted.gpu_type, wanted.gpu_count or 1)
            raise ContainerStartError(f"all GPUs matching gpu={request!r} are in use by other containers")
        self.gpus_in_use.update(chosen)
        return chosen

    def release_gpus(self, indices: list[int]) -> None:
        self.gpus_in_use.difference_update(indices)

    def check_gpu(self, function: FunctionDef) -> None:
        wanted = function.resources
        if not wanted.gpu_type:
            return
        count = wanted.gpu_count or 1
        gpus.validate(wanted.gpu_type, count)
        if self.gpu_available(wanted):
            # Never more containers than there are GPUs for them.
            assert self.gpus is not None
            fit = gpus.capacity(wanted.gpu_type, count, self.gpus)
            scaling = function.autoscaling
            scaling.max_containers = min(scaling.max_containers or fit, fit)
            return
        assert self.gpus is not None
        request = gpus.describe(wanted.gpu_type, count)
        have = ", ".join(sorted({d.name for d in self.gpus})) or "no GPU"
        if self.config.gpu_fallback_cpu:
            log.warning(
                "%s asks for gpu=%r; this machine has %s: running it on the CPU", function.tag, request, have
            )
            self.apps.get(function.app_id).logs.append(
                f"kiln: warning: {function.tag} asks for gpu={request!r} but this machine has {have}; "
                "running it on the CPU (the server was started with KILN_GPU_FALLBACK=cpu).\n",
                INFO,
            )
            function.resources.gpu_type, function.resources.gpu_count = "", 0
            return
        raise InvalidRequest(
            f"{function.tag} asks for gpu={request!r}, but this kiln server has {have}. Run it on a machine "
            "with such a GPU, or start kiln with KILN_GPU_FALLBACK=cpu (`kiln server --gpu-fallback cpu`) "
            "to run GPU functions on the CPU."
        )

    async def stop_app(self, app: App, reason: str = "The app was stopped.") -> None:
        """Stop an app: cancel its queued inputs, stop its containers, then end its log stream."""
        if not app.running:
            return
        app.state = AppState.STOPPING
        for call in list(self.calls.calls.values()):
            if call.app_id == app.app_id:
                self.calls.cancel(call.call_id, reason)
        await self.scheduler.stop_app(app.app_id)
        for call in list(self.calls.calls.values()):
            if call.app_id == app.app_id:
                for item in list(call.inputs.values()):
                    self.calls.complete(item.input_id, Result(Status.TERMINATED, reason))
        app.state = AppState.STOPPED
        app.stopped_at = time.time()
        app.logs.close()

    async def stop_orphaned_apps(self, now: float) -> None:
        """Stop ephemeral apps whose client went away without saying so."""
        for app in list(self.apps.apps.values()):
            if app.running and app.state not in _KEEP_RUNNING and now - app.last_heartbeat > HEARTBEAT_GRACE:
                log.warning(
                    "app %s sent no heartbeat for %.0f s: stopping it", app.app_id, now - app.last_heartbeat
                )
                await self.stop_app(app, "The app's client stopped sending heartbeats.")

    async def maintain(self, interval: float = 5.0) -> None:
        """Periodic upkeep; runs for the life of the server."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.stop_orphaned_apps(time.monotonic())
            except Exception:
                log.exception("app upkeep failed")

    async def shutdown(self) -> None:
        for app in list(self.apps.apps.values()):
            if app.running:
                await self.stop_app(app, "The kiln server is shutting down.")
