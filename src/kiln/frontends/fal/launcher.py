"""Starting fal runners: the environment's image, the shipped function, the app's port forwarded
to the host's loopback, and readiness once the app's health check answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from kiln.containers import Bind, ContainerHandle, ContainerSpec, PortForward, Runtime
from kiln.core.core import Core
from kiln.core.pool import Task
from kiln.errors import ContainerStartError, KilnError
from kiln.frontends.fal.files import FileStore
from kiln.frontends.fal.runner import JOB, RUNNER, RunnerDefinition, runner_env
from kiln.frontends.fal.secrets import secret_values
from kiln.frontends.modal.launcher import free_loopback_port
from kiln.ids import new_id
from kiln.staging import process_dir

_INSIDE = "/.kiln-fal"
_PROBE_INTERVAL = 0.2


class FalLauncher:
    def __init__(self, core: Core, runtime: Runtime, files: FileStore) -> None:
        self.core = core
        self.runtime = runtime
        self.files = files
        self.root = process_dir(Path("/tmp"), "kiln-fal-", runtime.ids.gid if runtime.ids else None)
        self._probes: dict[str, asyncio.Task[None]] = {}

    async def launch(self, task: Task) -> ContainerHandle:
        definition = RunnerDefinition.from_bytes(task.function.definition)
        layers, config = self.core.images.layers(definition.image_id)
        task_dir = self.root / task.task_id
        task_dir.mkdir()
        (task_dir / "function.pkl").write_bytes(definition.function)
        if self.runtime.ids is not None:
            self.runtime.ids.own(task_dir, task_dir / "function.pkl")
        host_port = free_loopback_port()
        task.http_address = ("127.0.0.1", host_port)
        logs = self.core.app_logs(task.function.app_id)
        tail: list[str] = []

        def to_app_log(fd: int, data: bytes) -> None:
            text = data.decode(errors="replace")
            logs.append(text, fd, task_id=task.task_id, function_id=task.function.function_id)
            tail.extend(text.splitlines())
            del tail[:-20]

        task.output_tail = tail
        secrets = secret_values(self.core, definition.environment, definition.secret_names)
        spec = ContainerSpec(
            image=layers,
            argv=["python", "-c", RUNNER, f"{_INSIDE}/function.pkl"],
            env={**config.env, **runner_env(secrets)},
            cwd=config.workdir or "/",
            binds=[
                Bind(task_dir, _INSIDE, read_only=True),
                self._data(definition.environment),
                *self._app_files(task_dir, definition.files),
            ],
            forwards=[PortForward(host_port, definition.port)],
            cpu_limit=task.function.resources.milli_cpu / 1000,
            memory_limit_mb=task.function.resources.memory_mb,
            gpus=list(task.placement.gpus),
        )
        container = await self.runtime.start(spec, to_app_log)
        probe = asyncio.ensure_future(self._ready_when_healthy(task, definition.health_path))
        self._probes[task.task_id] = probe
        return container

    async def run_once(
        self,
        image_id: str,
        function: bytes,
        sink: Callable[[int, bytes], None],
        timeout: float,
        secrets: dict[str, str],
        environment: str = "main",
        files: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """Run a `@fal.function` call in a container of its environment; what it returned or
        raised, as the job wrote it (JSON, checked here: the container's output is hostile)."""
        layers, config = self.core.images.layers(image_id)
        job_dir = self.root / new_id("jb")
        job_dir.mkdir()
        try:
            (job_dir / "function.pkl").write_bytes(function)
            if self.runtime.ids is not None:
                self.runtime.ids.own(job_dir, job_dir / "function.pkl")
            spec = ContainerSpec(
                image=layers,
                argv=["python", "-c", JOB, f"{_INSIDE}/function.pkl", f"{_INSIDE}/result.json"],
                env={**config.env, **runner_env(secrets)},
                cwd=config.workdir or "/",
                binds=[
                    Bind(job_dir, _INSIDE, read_only=False),
                    self._data(environment),
                    *self._app_files(job_dir, files or []),
                ],
            )
            container = await self.runtime.start(spec, sink)
            try:
                status = await asyncio.wait_for(container.wait(), timeout)
            except asyncio.TimeoutError:
                await container.kill()
                raise ContainerStartError(f"the function ran past its timeout of {timeout:g} s") from None
            return _outcome(job_dir / "result.json", status.describe())
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _app_files(self, directory: Path, files: list[tuple[str, str]]) -> list[Bind]:
        """The app's files under `/app`, a copy of the container's own (fal's wrapper adds
        `/app` to sys.path and works there)."""
        if not files:
            return []
        app = directory / "app"
        app.mkdir()
        try:
            self.files.materialize(files, app)
        except (OSError, ValueError) as exc:
            raise ContainerStartError(f"the app's files could not be laid out: {exc}") from None
        if self.runtime.ids is not None:
            self.runtime.ids.shift_tree(app)
        return [Bind(app, "/app", read_only=False)]

    def _data(self, environment: str) -> Bind:
        """`/data`: storage that outlives runners, shared by the apps of one fal environment (as
        fal's persistent `/data`), owned by the containers' root."""
        data = self.core.config.home / "fal-data" / (environment or "main")
        if not data.exists():
            data.mkdir(parents=True, mode=0o700)
            if self.runtime.ids is not None:
                self.runtime.ids.own(data)
        return Bind(data, "/data", read_only=False)

    async def _ready_when_healthy(self, task: Task, path: str) -> None:
        """A fal App's uvicorn answers only after its lifespan (the user's `setup()`) is done:
        route requests to the runner once its health check says 200."""
        assert task.http_address is not None
        host, port = task.http_address
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while task.killed_for is None:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(f"http://{host}:{port}{path}") as response:
                        if response.status < 500:
                            with contextlib.suppress(KilnError):
                                self.core.server_ready(task.task_id)
                            return
                await asyncio.sleep(_PROBE_INTERVAL)

    async def cleanup(self, task: Task) -> None:
        probe = self._probes.pop(task.task_id, None)
        if probe is not None:
            probe.cancel()
        shutil.rmtree(self.root / task.task_id, ignore_errors=True)

    async def shutdown(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        shutil.rmtree(self.root, ignore_errors=True)


_MAX_RESULT = 64 * 2**20  # bytes of a function's pickled result the server relays


def _outcome(path: Path, how_it_ended: str) -> dict[str, Any]:
    """The job's result file, validated: a dict of the expected fields, or a clear failure."""
    try:
        # The container wrote this file: never follow a link it planted, never read past the cap.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_RESULT * 2 + 1)
        if len(raw) > _MAX_RESULT * 2:
            raise ValueError("the result is over the size limit")
        data = json.loads(raw)
        outcome = {
            "definition": base64.b64decode(str(data["definition"]), validate=True),
            "raised": bool(data["raised"]),
            "traceback": str(data.get("traceback", ""))[:100_000],
            "type": str(data.get("type", ""))[:200],
            "message": str(data.get("message", ""))[:10_000],
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContainerStartError(
            f"the function's container ended ({how_it_ended}) without a result ({exc}); see its output above"
        ) from None
    return outcome
