"""Image requests: plan, dedupe, build in the background, and report progress to joiners."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers import Layer
from kiln.errors import ImageBuildError, KilnError, NotFound
from kiln.ids import stable_id
from kiln.images.builder import Builder
from kiln.images.planner import Plan, Recipe
from kiln.images.steps import ImageConfig
from kiln.storage.state import StateStore
from kiln.streams import INFO, STDOUT, LogBuffer

log = logging.getLogger("kiln.images")


@dataclass
class ImageBuild:
    """One image's build: its log and, once finished, its outcome."""

    image_id: str
    top_key: str
    logs: LogBuffer = field(default_factory=LogBuffer)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.done.is_set() and not self.error

    def finish(self, error: str = "") -> None:
        self.error = error
        self.done.set()
        self.logs.close()


class ImageService:
    def __init__(self, builder: Builder, state: StateStore) -> None:
        self.builder = builder
        self.state = state
        self._builds: dict[str, ImageBuild] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, recipe: Recipe) -> ImageBuild:
        """Return the image for `recipe`, starting its build if any layer is missing."""
        started = time.perf_counter()
        plan = self.builder.plan(recipe)
        image_id = stable_id("im", plan.top_key + recipe.ignore_cache_nonce)
        current = self._builds.get(image_id)
        if current is not None and (
            not current.done.is_set() or (current.succeeded and not recipe.force_build)
        ):
            _report(image_id, plan, "joined its build" if not current.done.is_set() else "cached", started)
            return current
        build = ImageBuild(image_id, plan.top_key)
        self._builds[image_id] = build
        missing = self.builder.missing(plan, recipe.force_build)
        _report(image_id, plan, f"{len(missing)} to build" if missing else "cached", started)
        if not missing:
            self._record(build)
            self.builder.store.touch(plan.top_key)
            build.finish()
            return build
        task = asyncio.ensure_future(self._build(build, plan, recipe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return build

    async def _build(self, build: ImageBuild, plan: Plan, recipe: Recipe) -> None:
        error = ""
        try:
            await self.builder.build(
                plan, recipe, lambda text: build.logs.append(text, STDOUT, image_id=build.image_id)
            )
            self._record(build)
        except KilnError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("image build %s failed", build.image_id)
            error = f"Image build failed inside kiln: {exc!r} (a kiln bug; see the server log)"
        if error:
            build.logs.append(error + "\n", INFO, image_id=build.image_id)
        build.finish(error)
        try:  # after the build is done: the size cap is no business of the image's user
            await asyncio.to_thread(self.builder.collector.enforce_cap)
        except Exception:
            log.exception("enforcing the layer store's size cap failed")

    def _record(self, build: ImageBuild) -> None:
        self.state.put("images", build.image_id, {"top_key": build.top_key})

    def get(self, image_id: str) -> ImageBuild:
        build = self._builds.get(image_id)
        if build is not None:
            return build
        record = self.state.get("images", image_id)
        if record is None or self.builder.store.get(record["top_key"]) is None:
            raise NotFound(f"Image {image_id} not found on this kiln server")
        build = ImageBuild(image_id, record["top_key"])
        build.finish()
        self._builds[image_id] = build
        return build

    def top_key(self, image_id: str) -> str:
        build = self.get(image_id)
        if not build.succeeded:
            raise ImageBuildError(
                f"Image {image_id} is not built: {build.error or 'its build is still running'}"
            )
        return build.top_key

    async def snapshot(self, upper: Path, parent_image_id: str, label: str) -> str:
        """A new image: `parent_image_id` with a container's writes (its overlay upper directory,
        whiteouts and all) as one more layer in the same store. Returns its image ID."""

        async def copy_upper(fs: Path) -> None:
            # As root: owners (the containers' ids), modes, overlay's whiteout devices and its
            # user.* xattrs (opaque directories) come along.
            copy = await asyncio.create_subprocess_exec(
                "cp", "-a", "--no-target-directory", str(upper), str(fs),
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, error = await copy.communicate()
            if copy.returncode != 0:
                raise ImageBuildError(
                    f"cannot snapshot the sandbox's files: {error.decode(errors='replace')[-500:]}"
                )

        parent = self.top_key(parent_image_id)
        return await self.one_layer_image(
            copy_upper, parent, self.config(parent_image_id), f"snapshot: {label}"
        )

    async def one_layer_image(
        self,
        fill: Callable[[Path], Awaitable[None]],
        parent: str | None = None,
        config: ImageConfig | None = None,
        step: str = "snapshot",
    ) -> str:
        """A new image of one more layer over `parent` (a layer key; None: a first layer), whose
        files `fill(fs)` writes into the empty directory `fs`. Returns its image ID."""
        key = hashlib.sha256(f"{step}\n{parent}\n{uuid.uuid4()}".encode()).hexdigest()
        store = self.builder.store
        with store.staging(key) as staging:
            await fill(staging / "fs")
            store.commit(staging, key, parent, step, config or ImageConfig())
        build = ImageBuild(stable_id("im", key), key)
        build.finish()
        self._builds[build.image_id] = build
        self._record(build)
        return build.image_id

    def config(self, image_id: str) -> ImageConfig:
        """A built image's config (env, workdir, Python version, …)."""
        layer = self.builder.store.get(self.top_key(image_id))
        assert layer is not None
        return layer.config

    def layers(self, image_id: str) -> tuple[list[Layer], ImageConfig]:
        """Layers (topmost first) and config of a built image."""
        key = self.top_key(image_id)
        store = self.builder.store
        layer = store.get(key)
        assert layer is not None
        store.touch(key)
        return store.image_layers(key), layer.config

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _report(image_id: str, plan: Plan, outcome: str, started: float) -> None:
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.info("image %s: %d layers, %s (planned in %.1f ms)", image_id, len(plan.layers), outcome, elapsed_ms)
