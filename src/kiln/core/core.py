"""The core's facade: what frontends, the gateway and the CLI may ask of apps, functions, calls
and containers. They call these methods; the state behind them stays private.

Storage rooms (`blobs`, `mounts`, `images`, `secrets`, `dicts`, `queues`, `volumes`) are public: each is an
API of its own. Everything a user creates is written to the journal before it is acknowledged,
and `restore()` brings it back when a server starts on the same KILN_HOME.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.auth import SignedUrls
from kiln.config import Config
from kiln.core import gpus
from kiln.core.apps import App, Apps, AppState
from kiln.core.autoscaler import check_settings
from kiln.core.calls import Calls, DataChunk, FunctionCall, Input, Invocation, Output
from kiln.core.frontend import Frontend
from kiln.core.functions import Autoscaling, FunctionDef, FunctionRecord, Resources
from kiln.core.journal import Deployment, Journal, TaskRecord
from kiln.core.placement import Placer, gpu_request
from kiln.core.pool import Pool, Scheduler, Task
from kiln.core.results import Result, Status
from kiln.core.sandbox_paths import sandbox_path
from kiln.core.sandboxes import Sandboxes
from kiln.core.schedules import next_run
from kiln.core.servers import ServerPool
from kiln.errors import InvalidRequest, KilnError, NotFound
from kiln.ids import new_id
from kiln.images.service import ImageService
from kiln.storage.blobs import BlobStore
from kiln.storage.dicts import Dicts
from kiln.storage.environments import Environments
from kiln.storage.logs import LogFiles
from kiln.storage.mounts import MountStore
from kiln.storage.proxy_tokens import ProxyTokens
from kiln.storage.queues import Queues
from kiln.storage.secrets import EPHEMERAL, Secrets
from kiln.storage.state import StateStore
from kiln.storage.volumes import Volumes
from kiln.streams import INFO, LogBuffer

log = logging.getLogger("kiln")

_KEEP_RUNNING = {AppState.DEPLOYED, AppState.DETACHED}
_RESTORED_LOG_ENTRIES = 10_000
_EXPIRY_INTERVAL = 3600.0  # seconds between sweeps of expired results
_DONE = FunctionCall("", "", "", Invocation.ASYNC, False)  # stands for a call already released


@dataclass(frozen=True)
class AutoscalerView:
    settings: Autoscaling  # what applies now
    static: Autoscaling  # what the function's definition says
    overrides: dict[str, Any]  # runtime changes


class Core:
    def __init__(
        self,
        config: Config,
        state: StateStore,
        blobs: BlobStore,
        mounts: MountStore,
        images: ImageService,
        placer: Placer | None = None,
        logs_dir: Path | None = None,
        volume_owner: tuple[int, int] | None = None,
        volumes_home: Path | None = None,
    ) -> None:
        self.config = config
        self.blobs = blobs
        self.mounts = mounts
        self.images = images
        self.secrets = Secrets(state)
        self.proxy_tokens = ProxyTokens(state)
        self.environments = Environments(state)
        self.dicts = Dicts(
            state, ephemeral_grace=config.ephemeral_object_grace, max_entry_bytes=config.dict_max_entry_bytes
        )
        self.queues = Queues(
            state,
            ephemeral_grace=config.ephemeral_object_grace,
            max_partition_items=config.queue_max_items,
            max_item_bytes=config.queue_max_item_bytes,
        )
        # Volume files live beside the state that names them (`volumes_home`, default KILN_HOME)
        # and belong to the containers' root (`volume_owner`), which writes them too.
        volumes_home = volumes_home or config.home
        self.volumes = Volumes(
            state,
            volumes_home / "volumes",
            volumes_home / "volume-blocks",
            owner=volume_owner,
            ephemeral_grace=config.ephemeral_object_grace,
        )
        self.http_url = ""  # where blob uploads and downloads go (set once HTTP listens)
        self.grpc_url = ""  # where the server's gRPC port listens (set once it does)
        # Signs blob URLs; the server sets one with its lasting key once HTTP listens.
        self.signed_urls = SignedUrls(secrets.token_bytes(32), "")
        self._journal = Journal(state)
        self._logs = LogFiles(logs_dir or config.logs_dir)
        self._placer = placer or Placer()
        self.sandboxes = Sandboxes(state, placer=self._placer)
        self._apps = Apps()
        self._calls = Calls(log=self._journal)
        self._scheduler = Scheduler(
            self._calls, capacity=config.max_containers, placer=self._placer, events=self._journal
        )
        self._functions: dict[str, FunctionDef] = {}
        self._frontends: dict[str, Frontend] = {}
        self._upkeep: asyncio.Task[None] | None = None
        self._schedule_loop: asyncio.Task[None] | None = None
        self._schedules: dict[str, tuple[float, float]] = {}  # function → (anchor, next run)
        self._scheduled_calls: set[str] = set()  # fired, not yet finished
        self._last_expiry = 0.0

    # --- life of the server

    def add_frontend(self, frontend: Frontend) -> None:
        """A protocol frontend; functions it registers boot through its launcher."""
        self._frontends[frontend.name] = frontend
        self._scheduler.launchers[frontend.name] = frontend.launcher

    def start(self) -> None:
        """Bring back what the journal holds, then start scheduling and upkeep."""
        started = time.monotonic()
        # Secrets made outside any app belonged to clients of an earlier server run.
        self.secrets.remove_owned_by(EPHEMERAL)
        self.volumes.remove_orphans()  # files of volumes deleted just before a crash
        apps, calls = self.restore()
        self._scheduler.start()
        self._upkeep = asyncio.ensure_future(self._maintain())
        self._schedule_loop = asyncio.ensure_future(self._run_schedules())
        if apps or calls:
            log.info(
                "restored %d running apps and %d unfinished calls in %.0f ms",
                apps,
                calls,
                (time.monotonic() - started) * 1000,
            )

    def restore(self) -> tuple[int, int]:
        """Apps, their functions and unfinished calls from the journal. Ephemeral apps get a full
        heartbeat grace from now: a client still running reconnects, a gone one is stopped."""
        running = 0
        self._journal.end_unfinished_tasks("the kiln server stopped")
        self.sandboxes.restore()
        for app in self._journal.load_apps():
            self._apps.add(app)
            if app.state == AppState.STOPPING:  # the server died while stopping it
                app.state, app.stopped_at = AppState.STOPPED, time.time()
                self._journal.save_app(app)
            if not app.running:
                continue
            frontend = self._frontends.get(app.frontend)
            if frontend is None:
                log.warning(
                    "app %s belongs to frontend %r, which this server lacks", app.app_id, app.frontend
                )
                continue
            running += 1
            app.last_heartbeat = time.monotonic()
            for class_id, _, meta in self._journal.classes_of(app.app_id):
                frontend.restore_class(class_id, app.app_id, meta)
            for record in self._journal.functions_of(app.app_id):
                self._register(frontend.restore_function(record), record, write=False)
        calls = 0
        for call_id in self._journal.unfinished_call_ids():
            stored = self._journal.load_call(call_id)
            if stored is None:
                continue
            if stored.call.function_id not in self._functions:
                # Its app is gone: its inputs end now, and say why.
                self._calls.restore(stored.call, stored.pending)
                for item in stored.pending:
                    self._calls.complete(item.input_id, Result(Status.TERMINATED, "The app was stopped."))
                continue
            self._calls.restore(stored.call, stored.pending)
            calls += 1
        return running, calls

    async def _maintain(self, interval: float = 5.0) -> None:
        """Periodic upkeep; runs for the life of the server."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.stop_orphaned_apps(time.monotonic())
                self._expire_results(time.time())
                self.dicts.expire()  # ephemeral dicts and queues whose client stopped beating,
                self.queues.expire()  # queue partitions past their time to live
                self.volumes.expire()
                self.volumes.sweep_blocks()  # upload blocks no longer needed
            except Exception:
                log.exception("app upkeep failed")

    async def _run_schedules(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.fire_due_schedules(time.time())
            except Exception:
                log.exception("running schedules failed")

    def fire_due_schedules(self, now: float) -> list[FunctionCall]:
        """Start a call (no arguments) of every scheduled function of a deployed app whose time
        has come; returns the calls started. Written ahead like any call."""
        for call_id in [c for c in self._scheduled_calls if not self._calls.calls.get(c, _DONE).unfinished]:
            self._scheduled_calls.discard(call_id)
            self._calls.release(call_id)  # nobody waits for a scheduled call: the journal keeps it
        started = []
        for function in list(self._functions.values()):
            schedule = function.schedule
            app = self._apps.apps.get(function.app_id)
            if schedule is None or app is None or app.state != AppState.DEPLOYED:
                continue
            if function.function_id not in app.function_ids.values():
                continue  # a variant, or a function the current deployment dropped
            anchor, due = self._schedules.get(function.function_id) or self._first_due(function, now)
            if due <= now:
                try:
                    call = self.start_call(function.function_id, Invocation.ASYNC, is_map=False)
                    self._calls.put_inputs(call, [(0, function.scheduled_input, "", False)])
                    self._scheduled_calls.add(call.call_id)
                    started.append(call)
                except KilnError as exc:
                    self.app_logs(app.app_id).append(
                        f"kiln: the scheduled run of {function.tag} failed: {exc}\n", INFO
                    )
                self._journal.schedule_ran(function.function_id, due)
                due = next_run(schedule, anchor, max(due, now))  # no catching up on missed runs
            self._schedules[function.function_id] = (anchor, due)
        return started

    def _first_due(self, function: FunctionDef, now: float) -> tuple[float, float]:
        assert function.schedule is not None
        anchor, last_run = self._journal.schedule_times(function.function_id) or (now, 0.0)
        return anchor, next_run(function.schedule, anchor, max(last_run, now))

    def _expire_results(self, now: float) -> None:
        if now - self._last_expiry < _EXPIRY_INTERVAL:
            return
        self._last_expiry = now
        cutoff = now - self.config.result_retention
        for call in [c for c in self._calls.calls.values() if c.created_at < cutoff and not c.unfinished]:
            self._calls.release(call.call_id)
        expired = self._journal.expire_calls(cutoff)
        apps = self._journal.expire_apps(cutoff)
        self.sandboxes.expire(cutoff)
        for app_id in apps:
            self._apps.apps.pop(app_id, None)
            self._logs.remove(app_id)
        if expired or apps:
            log.info(
                "forgot %d calls and %d stopped apps older than the result retention", expired, len(apps)
            )

    async def stop_ephemeral_apps(self, reason: str) -> None:
        """Stop the apps that live only as long as their client (deployed and detached apps stay)."""
        for app in list(self._apps.apps.values()):
            if app.running and app.state not in _KEEP_RUNNING:
                await self.stop_app(app.app_id, reason)

    async def shutdown(self) -> None:
        """Stop scheduling and kill every container. Inputs they held stay unfinished in the
        journal: the next server on this KILN_HOME runs them again."""
        for loop in (self._upkeep, self._schedule_loop):
            if loop is not None:
                loop.cancel()
        await self.sandboxes.shutdown()
        await self._scheduler.shutdown()
        self._logs.close()

    def close(self) -> None:
        self._journal.state.close()

    # --- apps

    def create_app(
        self, description: str, state: AppState, environment: str = "", frontend: str = "modal"
    ) -> App:
        app = self._apps.create(description, state, environment, frontend)
        app.logs = self._new_log(app.app_id)
        self._journal.save_app(app)
        return app

    def app(self, app_id: str) -> App:
        return self._apps.get(app_id)

    def app_logs(self, app_id: str) -> LogBuffer:
        """The app's log stream (after a restart, it starts with the entries kept on disk)."""
        app = self._apps.get(app_id)
        if app.logs is None:
            app.logs = self._new_log(app.app_id, self._logs.read(app.app_id, _RESTORED_LOG_ENTRIES))
            if not app.running:
                app.logs.close()
        return app.logs

    def _new_log(self, app_id: str, earlier: list[Any] | None = None) -> LogBuffer:
        return LogBuffer(earlier=earlier, keep=lambda entry: self._logs.append(app_id, entry))

    def apps(self, environment: str | None = None) -> list[App]:
        """Apps, newest first (all environments when `environment` is None)."""
        apps = [a for a in self._apps.apps.values() if environment is None or a.environment == environment]
        return sorted(apps, key=lambda a: a.created_at, reverse=True)

    def deployed_app(self, name: str, environment: str = "") -> App | None:
        return self._apps.by_name(name, environment)

    def last_app_named(self, name: str, environment: str = "") -> App | None:
        """The newest app published under `name`, running or stopped."""
        named = [a for a in self._apps.apps.values() if a.name == name and a.environment == environment]
        return max(named, key=lambda a: a.created_at) if named else None

    def running_app_named(self, name: str, environment: str = "") -> App | None:
        """A deployed app of that name, else the newest running app started under that name."""
        return self._apps.running_named(name, environment)

    def heartbeat(self, app_id: str) -> None:
        self._apps.get(app_id).last_heartbeat = time.monotonic()

    def running_containers(self, app_id: str) -> int:
        return sum(1 for t in self._scheduler.tasks() if t.function.app_id == app_id)

    def publish_app(
        self,
        app_id: str,
        *,
        name: str,
        state: AppState | None,
        function_ids: dict[str, str],
        class_ids: dict[str, str],
        tag: str = "",
        client_version: str = "",
        commit_info: bytes = b"",
    ) -> App:
        """Make an app's functions its published layout; a deploy records a new version."""
        app = self.app(app_id)
        app.function_ids = dict(function_ids)
        app.class_ids = dict(class_ids)
        if name:
            app.name = name
        if state is not None:
            app.state = state
        if app.state == AppState.DEPLOYED:
            self._record_deployment(app, tag, client_version, commit_info)
        self._journal.save_app(app)
        return app

    def _record_deployment(
        self, app: App, tag: str, client_version: str, commit_info: bytes, rollback_of: int = 0
    ) -> Deployment:
        records = {r.function_id: r for r in self._journal.functions_of(app.app_id)}
        wanted = set(app.function_ids.values())
        app.version += 1
        deployment = Deployment(
            app_id=app.app_id,
            version=app.version,
            deployed_at=time.time(),
            function_ids=dict(app.function_ids),
            class_ids=dict(app.class_ids),
            functions=[r for r in records.values() if r.function_id in wanted],
            classes=[c for c in self._journal.classes_of(app.app_id) if c[0] in set(app.class_ids.values())],
            tag=tag,
            client_version=client_version,
            rollback_of=rollback_of,
            commit_info=commit_info,
        )
        self._journal.add_deployment(deployment)
        for function_id in wanted:  # a deploy restarts periods (cron schedules keep their times)
            function = self._functions.get(function_id)
            if function is not None and function.schedule is not None:
                self._journal.schedule_deployed(function_id, deployment.deployed_at)
                self._schedules.pop(function_id, None)
        return deployment

    def app_history(self, app_id: str) -> list[Deployment]:
        """The app's deployments, newest first."""
        self.app(app_id)
        return self._journal.deployments(app_id)

    def rollback(self, app_id: str, version: int = -1) -> Deployment:
        """Serve an earlier deployment again, as a new version (-1: the one before the current)."""
        app = self.app(app_id)
        if app.state != AppState.DEPLOYED:
            raise InvalidRequest(
                f"App {app.name or app_id} is not deployed, so it has no version to roll back to"
            )
        history = self._journal.deployments(app_id)
        if version < 0:
            earlier = [d for d in history if d.version < app.version]
            if not earlier:
                raise InvalidRequest(f"App {app.name} has no version before v{app.version} to roll back to")
            target = earlier[0]
        else:
            matches = [d for d in history if d.version == version]
            if not matches:
                have = ", ".join(f"v{d.version}" for d in reversed(history)) or "none"
                raise NotFound(f"App {app.name} has no version v{version} (it has: {have})")
            target = matches[0]
        frontend = self._frontend(app.frontend)
        for class_id, _, meta in target.classes:
            self._journal.save_class(class_id, app_id, app.frontend, meta)
            frontend.restore_class(class_id, app_id, meta)
        for record in target.functions:
            self._register(frontend.restore_function(record), record)
        app.function_ids = dict(target.function_ids)
        app.class_ids = dict(target.class_ids)
        deployment = self._record_deployment(
            app, "", target.client_version, target.commit_info, target.version
        )
        self._journal.save_app(app)
        return deployment

    async def stop_app(self, app_id: str, reason: str = "The app was stopped.") -> None:
        """Stop an app: cancel its queued inputs, stop its containers, then end its log stream."""
        app = self.app(app_id)
        if not app.running:
            return
        app.state = AppState.STOPPING
        await self.sandboxes.stop_app(app.app_id)
        for call in list(self._calls.calls.values()):
            if call.app_id == app.app_id:
                self._calls.cancel(call.call_id, reason)
        await self._scheduler.stop_app(app.app_id)
        for call in list(self._calls.calls.values()):
            if call.app_id == app.app_id:
                for item in list(call.inputs.values()):
                    self._calls.complete(item.input_id, Result(Status.TERMINATED, reason))
        for function_id in [f for f, d in self._functions.items() if d.app_id == app.app_id]:
            del self._functions[function_id]
        app.state = AppState.STOPPED
        app.stopped_at = time.time()
        self._journal.save_app(app)
        self.dicts.forget_app(app.app_id)  # the objects it owned go with it
        self.queues.forget_app(app.app_id)
        self.volumes.forget_app(app.app_id)
        self.secrets.remove_owned_by(app.app_id)
        self.app_logs(app.app_id).close()
        self._logs.close(app.app_id)

    async def disconnect_app(self, app_id: str) -> None:
        """The app's client is done with it: an ephemeral app stops, a deployed one keeps serving."""
        app = self.app(app_id)
        if app.state not in _KEEP_RUNNING:
            await self.stop_app(app_id)

    async def stop_orphaned_apps(self, now: float) -> None:
        """Stop ephemeral apps whose client went away without saying so."""
        grace = self.config.heartbeat_grace
        for app in list(self._apps.apps.values()):
            if app.running and app.state not in _KEEP_RUNNING and now - app.last_heartbeat > grace:
                log.warning(
                    "app %s sent no heartbeat for %.0f s: stopping it", app.app_id, now - app.last_heartbeat
                )
                await self.stop_app(app.app_id, "The app's client stopped sending heartbeats.")

    # --- functions

    def _frontend(self, name: str) -> Frontend:
        frontend = self._frontends.get(name)
        if frontend is None:
            raise InvalidRequest(f"this kiln server has no {name!r} frontend")
        return frontend

    def register_function(self, function: FunctionDef, meta: bytes = b"") -> None:
        """Make a function callable (written ahead: it survives a restart). A GPU this machine
        lacks is accepted here — Modal accepts the declaration — and refused when it is called."""
        check_settings(function.autoscaling)
        record = FunctionRecord(
            function.function_id, function.app_id, function.frontend, function.definition, meta
        )
        self._register(function, record)

    def register_class(self, class_id: str, app_id: str, meta: bytes, frontend: str = "modal") -> None:
        self._journal.save_class(class_id, app_id, frontend, meta)

    def _register(self, function: FunctionDef, record: FunctionRecord, write: bool = True) -> None:
        if function.schedule is not None:
            function.schedule.check()
        if function.resources.gpu_type:
            gpus.validate(function.resources.gpu_type, function.resources.gpu_count or 1)
            self._fit_to_gpus(function)
        if write:
            self._journal.save_function(record)
        self._functions[function.function_id] = function
        pool = self._scheduler.register(function)
        if write:
            self._journal.save_overrides(function.function_id, pool.overrides)  # a new deploy clears them
        else:  # restored: as the user last left them
            pool.override(self._journal.overrides(function.function_id))

    def _fit_to_gpus(self, function: FunctionDef) -> None:
        """Never more containers than there are GPUs for them; with the CPU fallback, a GPU
        this machine lacks is dropped (with a warning in the app's log)."""
        fit = self._placer.fit(function.resources)
        if fit:
            scaling = function.autoscaling
            scaling.max_containers = min(scaling.max_containers or fit, fit)
        elif self.config.gpu_fallback_cpu:
            self._run_on_cpu(function.tag, function.app_id, function.resources)

    def _run_on_cpu(self, who: str, app_id: str, resources: Resources) -> None:
        """The CPU fallback: drop a GPU request this machine cannot serve, saying so in the log
        and the app's log."""
        request = gpus.describe(*(gpu_request(resources) or ("", 1)))
        have = self._placer.describe_machines()
        log.warning("%s asks for gpu=%r; this machine has %s: running it on the CPU", who, request, have)
        self.app_logs(app_id).append(
            f"kiln: warning: {who} asks for gpu={request!r} but this machine has {have}; "
            "running it on the CPU (the server was started with KILN_GPU_FALLBACK=cpu).\n",
            INFO,
        )
        resources.gpu_type, resources.gpu_count = "", 0

    def sandbox_resources(self, resources: Resources, app_id: str) -> Resources:
        """What a sandbox runs with: its GPUs placed as a function's are (`Sandboxes.create`
        holds them until it ends); a GPU this machine lacks is refused with the fix, or dropped
        with the CPU fallback (KILN_GPU_FALLBACK=cpu)."""
        if not resources.gpu_type:
            return resources
        gpus.validate(resources.gpu_type, resources.gpu_count or 1)
        if not self._placer.servable(resources):
            if not self.config.gpu_fallback_cpu:
                raise self._no_gpu_for("A sandbox", resources)
            self._run_on_cpu("a sandbox", app_id, resources)
        return resources

    def gpu_servable(self, function: FunctionDef | Any) -> bool:
        """Whether this machine can run a function with these resources now or later."""
        resources = function.resources if isinstance(function, FunctionDef) else function
        return self._placer.servable(resources)

    def function(self, function_id: str) -> FunctionDef:
        function = self._functions.get(function_id)
        if function is None:
            raise NotFound(f"Function {function_id} is not defined on this kiln server")
        return function

    def function_load(self, function_id: str) -> tuple[int, int, int]:
        """(queued inputs, running inputs, containers) of a running function."""
        pool = self._scheduler.pools.get(function_id)
        if pool is None:
            raise NotFound(f"Function {function_id} is not running on this kiln server")
        load = pool.load()
        return load.queued, load.running, load.containers

    def autoscaler(self, function_id: str) -> AutoscalerView:
        pool = self._pool(function_id)
        return AutoscalerView(pool.settings, pool.function.autoscaling, dict(pool.overrides))

    def update_autoscaler(self, function_id: str, changes: dict[str, Any]) -> Autoscaling:
        pool = self._pool(function_id)
        settings = pool.override(changes)
        self._journal.save_overrides(function_id, pool.overrides)
        return settings

    def _pool(self, function_id: str) -> Pool:
        pool = self._scheduler.pools.get(function_id)
        if pool is None:
            raise NotFound(
                f"Function {function_id} is not running on this kiln server; "
                "deploy or run its app before changing its autoscaler"
            )
        return pool

    # --- calls

    def start_call(
        self, function_id: str, invocation: Invocation, is_map: bool, durable: bool = True
    ) -> FunctionCall:
        """A new call; `durable` ones are written ahead and outlive a restart."""
        function = self.function(function_id)
        self._check_servable(function)
        return self._calls.create(
            function.function_id, function.app_id, invocation, is_map, function.retry, durable
        )

    def _check_servable(self, function: FunctionDef) -> None:
        if not self._placer.servable(function.resources):
            raise self._no_gpu_for(function.tag, function.resources)

    def _no_gpu_for(self, who: str, resources: Resources) -> InvalidRequest:
        wanted = gpu_request(resources)
        assert wanted is not None
        return InvalidRequest(
            f"{who} asks for gpu={gpus.describe(*wanted)!r}, but this kiln server has "
            f"{self._placer.describe_machines()}. Run it on a machine with such a GPU, or start kiln with "
            "KILN_GPU_FALLBACK=cpu (`kiln server --gpu-fallback cpu`) to run GPU functions and sandboxes "
            "on the CPU."
        )

    def put_inputs(self, call: FunctionCall, items: list[tuple[int, bytes, str, bool]]) -> list[Input]:
        """Queue (idx, payload, method_name, final) inputs; they are durable when this returns."""
        if call.cancelled:
            raise InvalidRequest(f"Function call {call.call_id} was cancelled; start a new call")
        return self._calls.put_inputs(call, items)

    def call(self, call_id: str) -> FunctionCall:
        """A live call, or a finished one whose results are still kept."""
        call = self._calls.get(call_id)
        if call is None:
            stored = self._journal.load_call(call_id)
            if stored is None:
                raise NotFound(f"Function call {call_id} not found (its results may have expired)")
            # Every call with unfinished inputs was restored at start: this one is finished.
            call = stored.call
            self._calls.restore(call, [])
        return call

    async def wait_outputs(
        self, call: FunctionCall, after: int, timeout: float, linger: float = 0.0
    ) -> list[Output]:
        return await self._calls.wait_outputs(call, after, timeout, linger)

    def release_call(self, call_id: str) -> None:
        """The caller has every output: free the memory (the journal keeps them)."""
        self._calls.release(call_id)

    def cancel_call(self, call_id: str, terminate: bool = False) -> None:
        running = self._calls.cancel(call_id)
        self._scheduler.cancel_running(running, terminate=terminate)

    def put_data_out(self, call_id: str, chunks: list[DataChunk]) -> None:
        self._calls.put_data_out(call_id, chunks)

    def data_out_after(self, call: FunctionCall, last_index: int) -> list[DataChunk]:
        return self._calls.data_out_after(call, last_index)

    def put_data_in(self, call: FunctionCall, data_format: int, messages: list[bytes]) -> None:
        """Stream messages to the container running the call (a web request's body, say)."""
        self._calls.put_data_in(call, data_format, messages)

    def data_in_after(self, call: FunctionCall, last_index: int) -> list[DataChunk]:
        return self._calls.data_in_after(call, last_index)

    # --- containers (what a container asks for, by its task ID)

    def task(self, task_id: str) -> Task:
        """The running container `task_id` (only kiln's containers have one)."""
        return self._found(task_id)[1]

    def tasks(self, app_id: str = "") -> list[Task]:
        """Running containers (of one app, or all)."""
        return [t for t in self._scheduler.tasks() if not app_id or t.function.app_id == app_id]

    def task_record(self, task_id: str) -> TaskRecord:
        """A container, running or ended (kept as long as results are)."""
        record = self._journal.task(task_id)
        if record is None:
            task = self._scheduler.task(task_id)
            if task is None:
                return self._sandbox_task(task_id)
            return TaskRecord(
                task.task_id, task.function.app_id, task.function.function_id, task.enqueued_at, 0.0
            )
        return record

    async def snapshot_sandbox(self, task_id: str) -> str:
        """The files of the sandbox running as `task_id`, now, as an image (its ID) that later
        sandboxes and functions start from."""
        sandbox = self.sandboxes.by_task(task_id)
        async with self.sandboxes.paused(task_id) as upper:
            return await self.images.snapshot(upper, sandbox.image_id, sandbox.sandbox_id)

    async def snapshot_directory(self, task_id: str, path: str) -> str:
        """The sandbox's directory `path` now, as an image whose root holds its contents (its ID):
        what `mount_image` of another sandbox shows at its mount point."""
        path = sandbox_path(path, "snapshot")
        sandbox = self.sandboxes.by_task(task_id)

        async def copy(fs: Path) -> None:
            await self.sandboxes.snapshot_directory(task_id, path, fs)

        return await self.images.one_layer_image(copy, step=f"directory {path} of {sandbox.sandbox_id}")

    async def mount_image(self, task_id: str, path: str, image_id: str) -> None:
        """Mount a built image (`""`: an empty one) at the sandbox's `path`, until unmounted."""
        path = sandbox_path(path, "mount")
        self.sandboxes.by_task(task_id)
        layers = []
        if image_id:
            image_layers, _ = self.images.layers(image_id)
            layers = [self.images.builder.store.fs_path(layer.key) for layer in image_layers]
        await self.sandboxes.mount_image(task_id, path, layers)

    async def unmount_image(self, task_id: str, path: str) -> None:
        await self.sandboxes.unmount_image(task_id, sandbox_path(path, "unmount"))

    def _sandbox_task(self, task_id: str) -> TaskRecord:
        try:
            info = self.sandboxes.info_by_task(task_id)
        except NotFound:
            raise NotFound(f"Container {task_id} not found on this kiln server") from None
        ended = info.result.message or f"exit code {info.result.exitcode}" if info.result else ""
        return TaskRecord(task_id, info.app_id, "", info.created_at, info.created_at, info.finished_at, ended)

    async def next_inputs(
        self, task_id: str, max_items: int, linger: float, wait: float
    ) -> list[Input] | None:
        """Inputs for a container asking for work (empty: ask again); None tells it to stop."""
        pool, task = self._found(task_id)
        return await pool.next_inputs(task, max_items, linger, wait)

    def put_outputs(self, task_id: str, outputs: Iterable[tuple[str, int, Result]]) -> None:
        pool, task = self._found(task_id)
        pool.put_outputs(task, outputs)

    def take_cancellations(self, task_id: str) -> list[str]:
        pool, task = self._found(task_id)
        return pool.take_cancellations(task)

    def init_failed(self, task_id: str, result: Result) -> None:
        """The container's import or setup failed: no container of its function can work."""
        self.task(task_id).failure = result

    def server_ready(self, task_id: str) -> None:
        """A server container's HTTP server accepts connections: requests may go to it."""
        pool, task = self._found(task_id)
        if not isinstance(pool, ServerPool):
            raise InvalidRequest(f"{pool.function.tag} is not a server (`@app.server`)")
        pool.server_ready(task)

    def server(self, function_id: str) -> ServerPool:
        """The containers of a running server, for its requests and sessions
        (`async with core.server(fid).request() as task: … task.http_address`)."""
        pool = self._scheduler.pools.get(function_id)
        if not isinstance(pool, ServerPool) or not self.app(pool.function.app_id).running:
            raise NotFound("This server's app is not running; deploy or serve it again.")
        return pool

    def stop_container(self, task_id: str, graceful: bool = True) -> bool:
        """Ask a container to finish (graceful) or kill it now; False if there is no such container."""
        found = self._scheduler.find(task_id)
        if found is None:
            return self.sandboxes.stop(task_id)
        pool, task = found
        if graceful:
            pool.drain(task)
        else:
            pool.terminate(task, "The container was stopped.")
        return True

    def attach_task(self, function_id: str) -> Task:
        """A container of `function_id` that its pool does not run (an image build's): its
        requests reach the pool like any container's. Detach it when it is done."""
        pool = self._pool(function_id)
        task = Task(new_id("ta"), pool.function)
        pool.attach(task)
        return task

    def detach_task(self, task: Task) -> None:
        pool = self._scheduler.pools.get(task.function.function_id)
        if pool is not None:
            pool.detach(task)

    def _found(self, task_id: str) -> tuple[Pool, Task]:
        found = self._scheduler.find(task_id) if task_id else None
        if found is None:
            raise InvalidRequest("this RPC is only for kiln's containers")
        return found
