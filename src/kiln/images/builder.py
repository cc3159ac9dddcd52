"""The image builder: turns a recipe into a chain of cached layers, one step at a time.

Each filesystem step runs in a sandbox over its parent's layers; the sandbox's overlay upper
directory *is* the new layer. Keys are computed before anything runs, so a request for an image
whose layers all exist does no work, and two requests for the same missing layer share one build.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.containers import Bind, BubblewrapRuntime, ContainerSpec
from kiln.errors import ImageBuildError
from kiln.images.base import BaseLayer, BaseResolver
from kiln.images.keys import layer_key
from kiln.images.layer_store import Layer, LayerStore
from kiln.images.steps import ImageConfig, Step, apply_config_step, parse_dockerfile

LogSink = Callable[[str], None]
CONTEXT_MOUNT = "/.kiln-build-context"
_TAIL_LINES = 25


@dataclass
class BuildContext:
    """Files a COPY may read: relative path → file on the host."""

    files: dict[str, Path] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # relative path → sha256 hex

    def digest(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.digests):
            h.update(f"{path}\0{self.digests[path]}\n".encode())
        return h.hexdigest()


@dataclass
class Recipe:
    """What to build: Dockerfile lines on top of a parent layer (or a FROM reference)."""

    dockerfile: list[str]
    parent_key: str | None = None
    context: BuildContext = field(default_factory=BuildContext)
    secret_env: dict[str, str] = field(default_factory=dict)
    secret_ids: list[str] = field(default_factory=list)
    force_build: bool = False
    ignore_cache_nonce: str = ""


@dataclass
class PlannedLayer:
    key: str
    parent: str | None
    label: str  # what the log shows
    step: Step | None = None
    base: BaseLayer | None = None
    config: ImageConfig = field(default_factory=ImageConfig)


@dataclass
class Plan:
    layers: list[PlannedLayer]
    notice: str = ""

    @property
    def top_key(self) -> str:
        return self.layers[-1].key


class Builder:
    def __init__(
        self,
        store: LayerStore,
        runtime: BubblewrapRuntime,
        bases: BaseResolver,
        scratch: Path,
        network_env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.network_env = network_env or {}
        self.runtime = runtime
        self.bases = bases
        self.scratch = scratch
        self._in_flight: dict[str, asyncio.Future[Layer]] = {}

    # -- planning: pure apart from reading the parent's config ---------------------------------

    def plan(self, recipe: Recipe) -> Plan:
        """Compute every layer's key and resulting config without building anything."""
        steps = parse_dockerfile(recipe.dockerfile)
        layers: list[PlannedLayer] = []
        notice = ""
        parent = recipe.parent_key
        config = self._config_of(parent) if parent else ImageConfig()
        inputs_base: dict[str, str] = {}
        if recipe.ignore_cache_nonce:
            inputs_base["ignore_cache"] = recipe.ignore_cache_nonce
        if recipe.secret_ids:
            inputs_base["secrets"] = ",".join(recipe.secret_ids)
        for step in steps:
            if step.instruction == "FROM":
                reference = step.argument.split(" AS ")[0].split(" as ")[0].strip()
                if reference == "base":
                    if recipe.parent_key is None:
                        raise ImageBuildError("`FROM base` needs a base image, but none was given")
                    continue
                base = self.bases.resolve(reference)
                notice = base.notice
                parent = None
                for base_layer in base.layers:
                    key = layer_key(parent, f"BASE {base_layer.name}")
                    layers.append(
                        PlannedLayer(
                            key,
                            parent,
                            f"base: {base_layer.name}",
                            step=base_layer.step,
                            base=base_layer,
                            config=base.config.copy(),
                        )
                    )
                    parent = key
                config = base.config.copy()
                continue
            if parent is None:
                raise ImageBuildError(f"the first instruction must be FROM (got `{step.text}`)")
            inputs = dict(inputs_base)
            if step.instruction in ("COPY", "ADD"):
                inputs["context"] = recipe.context.digest()
            config = config.copy()
            apply_config_step(config, step)
            key = layer_key(parent, step.text, inputs)
            layers.append(PlannedLayer(key, parent, step.text, step=step, config=config))
            parent = key
        if not layers:
            if parent is None:
                raise ImageBuildError("an image needs a FROM instruction or a base image")
            # An image that adds nothing to its parent is its parent.
            layers.append(PlannedLayer(parent, None, "(no changes)", config=config))
        return Plan(layers, notice)

    def _config_of(self, key: str) -> ImageConfig:
        layer = self.store.get(key)
        if layer is not None:
            return layer.config
        raise ImageBuildError(f"parent layer {key[:12]} is not built; build the parent image first")

    def missing(self, plan: Plan, force: bool = False) -> list[PlannedLayer]:
        return [p for p in plan.layers if force or self.store.get(p.key) is None]

    # -- building -----------------------------------------------------------------------------

    async def build(self, plan: Plan, recipe: Recipe, log: LogSink) -> Layer:
        """Build every missing layer of `plan`, in order, and return the top one."""
        if plan.notice:
            log(f"{plan.notice}\n")
        total = len(plan.layers)
        top: Layer | None = None
        for number, planned in enumerate(plan.layers, 1):
            existing = self.store.get(planned.key)
            rebuild = recipe.force_build and planned.step is not None and planned.base is None
            if existing is not None and not rebuild:
                top = existing
                continue
            log(f"=> Step {number}/{total}: {planned.label}\n")
            in_flight = self._in_flight.get(planned.key)
            if in_flight is not None:
                top = await asyncio.shield(in_flight)
                continue
            future: asyncio.Future[Layer] = asyncio.get_running_loop().create_future()
            self._in_flight[planned.key] = future
            try:
                started = time.monotonic()
                top = await self._build_layer(planned, recipe, log, replace=rebuild)
                log(f"   done in {time.monotonic() - started:.1f}s\n")
                future.set_result(top)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it themselves
                raise
            finally:
                del self._in_flight[planned.key]
        assert top is not None
        self.store.touch(top.key)
        return top

    async def _build_layer(self, planned: PlannedLayer, recipe: Recipe, log: LogSink, replace: bool) -> Layer:
        with self.store.staging(planned.key) as staging:
            if planned.base is not None and planned.base.materialize is not None:
                await asyncio.to_thread(planned.base.materialize, staging / "fs")
            elif planned.step is not None and planned.step.instruction in ("RUN", "COPY", "ADD", "WORKDIR"):
                await self._run_step(planned, recipe, staging / "fs", log)
            return self.store.commit(
                staging, planned.key, planned.parent, planned.label, planned.config, replace=replace
            )

    async def _run_step(self, planned: PlannedLayer, recipe: Recipe, upper: Path, log: LogSink) -> None:
        assert planned.step is not None and planned.parent is not None
        parent_config = self._config_of(planned.parent)
        step = planned.step
        binds: list[Bind] = []
        context_dir: Path | None = None
        env = {**self.network_env, **parent_config.env}
        cwd = parent_config.workdir or "/"
        if step.instruction == "RUN":
            argv = [*parent_config.shell, step.argument]
            env.update(recipe.secret_env)
        elif step.instruction == "WORKDIR":
            argv = ["mkdir", "-p", planned.config.workdir]
        else:
            context_dir = Path(tempfile.mkdtemp(dir=self.scratch, prefix="context-"))
            await asyncio.to_thread(_materialize_context, recipe.context, context_dir)
            binds.append(Bind(context_dir, CONTEXT_MOUNT, read_only=True))
            argv = ["/bin/sh", "-c", copy_script(step.argument, cwd)]
        spec = ContainerSpec(
            layers=self.store.lower_dirs(planned.parent),
            argv=argv,
            env=env,
            cwd=cwd,
            binds=binds,
            upper=upper,
        )
        tail: list[str] = []

        def sink(fd: int, data: bytes) -> None:
            text = data.decode(errors="replace")
            tail.extend(text.splitlines())
            del tail[:-_TAIL_LINES]
            log(text)

        try:
            container = await self.runtime.start(spec, sink)
            status = await container.wait()
        finally:
            if context_dir is not None:
                shutil.rmtree(context_dir, ignore_errors=True)
        if not status.ok:
            shown = "\n".join(f"  {line}" for line in tail) or "  (no output)"
            raise ImageBuildError(
                f"Image build step failed: `{step.text}` ended with {status.describe()}.\n"
                f"Last output:\n{shown}\n"
                "Fix the command (or the package name) in the image definition and run again; "
                "earlier steps are cached."
            )


def _materialize_context(context: BuildContext, dest: Path) -> None:
    for rel, source in context.files.items():
        target = dest / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(source)
        except OSError:
            shutil.copy2(source, target)


def copy_script(argument: str, workdir: str) -> str:
    """A shell script doing Dockerfile `COPY src... dst` from the bound build context."""
    words = shlex.split(argument)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    for flag in flags:
        if flag.startswith("--from="):
            raise ImageBuildError(
                f"`COPY {argument}`: copying from another image (--from) is not supported by kiln yet"
            )
    if len(paths) < 2:
        raise ImageBuildError(f"`COPY {argument}` needs a source and a destination")
    *sources, dest = paths
    if not dest.startswith("/"):
        dest = workdir.rstrip("/") + "/" + dest
    to_dir = dest.endswith("/") or len(sources) > 1
    quoted_dest = shlex.quote(dest)
    lines = ["set -e", f"cd {CONTEXT_MOUNT}"]
    for source in sources:
        src = posixpath.normpath(source.lstrip("/") or ".")
        if src == ".." or src.startswith("../"):
            raise ImageBuildError(f"`COPY {argument}`: {source} is outside the build context")
        lines.append(f"set -- {_glob_quote(src)}")  # the context's shell globs (COPY *.py /app/) expand here
        lines.append(
            f'if [ ! -e "$1" ]; then echo "COPY failed: {src} is not in the build context" >&2; exit 1; fi'
        )
        if not to_dir:
            lines.append(
                f'if [ $# -gt 1 ]; then echo "COPY failed: {src} matches several files, so the destination '
                f'must be a directory ending in /" >&2; exit 1; fi'
            )
        target_dir = quoted_dest if to_dir else f'"$(dirname {quoted_dest})"'
        lines.append(
            f'for s in "$@"; do if [ -d "$s" ]; then mkdir -p {quoted_dest} && cp -a "$s"/. {quoted_dest}; '
            f'else mkdir -p {target_dir} && cp -a "$s" {quoted_dest}; fi; done'
        )
    return "\n".join(lines)


def _glob_quote(path: str) -> str:
    # Quote everything except glob characters so that only globbing happens.
    out = []
    for char in path:
        out.append(
            char
            if char in "*?[]"
            else shlex.quote(char)
            if not char.isalnum() and char not in "._-/"
            else char
        )
    return "".join(out)
