"""The image builder: runs a plan's missing layers, one step at a time, each in a sandbox.

Each filesystem step runs in a sandbox over its parent's layers; the sandbox's overlay upper
directory *is* the new layer. Two requests for the same missing layer share one build: in this
process by a shared future, across processes sharing KILN_HOME by a lock file per layer key.
RUN steps get persistent pip and uv caches (like BuildKit cache mounts): bound from the host at
/.kiln-cache and named by PIP_CACHE_DIR and UV_CACHE_DIR, so they never enter a layer, and a
step's own `rm -rf /root/.cache` still works.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from kiln.containers import Bind, ContainerSpec, IdMap, Runtime
from kiln.containers.bubblewrap import HOST_FILES
from kiln.errors import ImageBuildError
from kiln.images.base import BaseResolver
from kiln.images.context import BuildContext, materialize_from_layers
from kiln.images.gc import Collector
from kiln.images.layer_store import Layer, LayerStore
from kiln.images.locks import LayerLocks
from kiln.images.output import StepOutput
from kiln.images.planner import LogSink, Plan, PlannedLayer, Recipe, plan
from kiln.images.steps import ImageConfig, apply_config_step, split_flags

__all__ = ["BuildContext", "Builder", "copy_script"]

server_log = logging.getLogger("kiln.images")

CONTEXT_MOUNT = "/.kiln-build-context"
PACKAGE_CACHES = {"PIP_CACHE_DIR": "pip", "UV_CACHE_DIR": "uv"}  # env variable → cache
CACHE_MOUNT = "/.kiln-cache"
_SANDBOX_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")


class Builder:
    def __init__(
        self,
        store: LayerStore,
        runtime: Runtime,
        bases: BaseResolver,
        scratch: Path,
        network_env: dict[str, str] | None = None,
        package_cache: Path | None = None,
        collector: Collector | None = None,
        ids: IdMap | None = None,
    ) -> None:
        self.store = store
        # Files made on the host for a layer are shifted to the containers' ids (None: left as
        # they are, for runtimes that map no ids).
        self.ids = ids
        self.network_env = network_env or {}
        self.runtime = runtime
        self.bases = bases
        self.scratch = scratch
        self.package_cache = package_cache
        self.collector = collector or Collector(store)
        self.locks = LayerLocks(store.root / ".locks")
        self._in_flight: dict[str, asyncio.Future[Layer]] = {}
        self._building: collections.Counter[str] = collections.Counter()

    def plan(self, recipe: Recipe) -> Plan:
        """Compute every layer's key without building anything."""
        return plan(recipe, self.bases)

    def missing(self, plan: Plan, force: bool = False) -> list[PlannedLayer]:
        return [p for p in plan.layers if (force and _rebuilt_by_force(p)) or self.store.get(p.key) is None]

    async def build(self, plan: Plan, recipe: Recipe, log: LogSink) -> Layer:
        """Build every missing layer of `plan`, in order, and return the top one."""
        for notice in plan.notices:
            log(f"{notice}\n")
        keys = [p.key for p in plan.layers]
        self._protect(keys, 1)
        try:
            total = len(plan.layers)
            for number, planned in enumerate(plan.layers, 1):
                rebuild = recipe.force_build and _rebuilt_by_force(planned)
                if self.store.get(planned.key) is None or rebuild:
                    log(f"=> Step {number}/{total}: {planned.label}\n")
                    await self._build_once(planned, recipe, log, rebuild)
        finally:
            self._protect(keys, -1)
        top = self.store.get(plan.top_key)
        if top is None:
            raise ImageBuildError(
                f"layer {plan.top_key[:12]} vanished during the build (evicted?); run again"
            )
        self.store.touch(top.key)
        return top

    def _protect(self, keys: list[str], delta: int) -> None:
        self._building.update({key: delta for key in keys})
        self.collector.protected = {key for key, count in self._building.items() if count > 0}

    async def _build_once(self, planned: PlannedLayer, recipe: Recipe, log: LogSink, rebuild: bool) -> Layer:
        in_flight = self._in_flight.get(planned.key)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future: asyncio.Future[Layer] = asyncio.get_running_loop().create_future()
        self._in_flight[planned.key] = future
        try:
            async with self.locks.hold(planned.key):
                existing = self.store.get(planned.key)
                if existing is not None and not rebuild:
                    log("   built meanwhile by another kiln process\n")
                    server_log.info(
                        "layer %s (%s): built by another process", planned.key[:12], planned.label
                    )
                    layer = existing
                else:
                    server_log.info("layer %s (%s): building", planned.key[:12], planned.label)
                    started = time.monotonic()
                    layer = await self._build_layer(planned, recipe, log, replace=rebuild)
                    log(f"   done in {time.monotonic() - started:.1f}s\n")
            future.set_result(layer)
            return layer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._in_flight[planned.key]

    async def _build_layer(self, planned: PlannedLayer, recipe: Recipe, log: LogSink, replace: bool) -> Layer:
        with self.store.staging(planned.key) as staging:
            config = await self._fill(planned, recipe, staging / "fs", log)
            return self.store.commit(
                staging, planned.key, planned.parent, planned.label, config, replace=replace
            )

    async def _fill(self, planned: PlannedLayer, recipe: Recipe, upper: Path, log: LogSink) -> ImageConfig:
        """Make the layer's files in `upper`; returns the layer's config."""
        base = planned.base
        if base is not None and base.materialize is not None:
            made = await asyncio.to_thread(base.materialize, upper)
            await asyncio.to_thread(self._shift, upper, base.links_host_files)
            return made or planned.base_config or ImageConfig()
        assert planned.parent is not None
        parent_config = self._config_of(planned.parent)
        if planned.build_function is not None:
            await planned.build_function.run(planned.parent, upper, log)
            _scrub(upper, ["/.kiln"])  # the socket directory the build container was given
            shutil.rmtree(upper / HOST_FILES.lstrip("/"), ignore_errors=True)
            return parent_config.copy()
        step = planned.step
        assert step is not None
        config = planned.base_config.copy() if planned.base_config else parent_config.copy()
        if base is None:
            apply_config_step(config, step, planned.args)
        if step.instruction in _SANDBOX_STEPS:
            await self._run_step(planned, recipe, parent_config, config, upper, log)
        return config

    def _config_of(self, key: str) -> ImageConfig:
        layer = self.store.get(key)
        if layer is not None:
            return layer.config
        raise ImageBuildError(f"parent layer {key[:12]} is not built; build the parent image first")

    async def _run_step(
        self,
        planned: PlannedLayer,
        recipe: Recipe,
        parent_config: ImageConfig,
        config: ImageConfig,
        upper: Path,
        log: LogSink,
    ) -> None:
        assert planned.step is not None and planned.parent is not None
        step = planned.step
        env = {**self.network_env, "HOME": "/root", **parent_config.env}
        cwd = parent_config.workdir or "/"
        if step.instruction == "RUN":
            secrets = recipe.secret_env if planned.base is None else {}
            env.update({**planned.args, **secrets})
            binds = self._package_cache_binds(env) + [Bind(src, dst) for src, dst in recipe.run_binds]
            await self._sandbox(
                planned,
                [*parent_config.shell, step.argument],
                env,
                cwd,
                binds,
                upper,
                log,
                secrets,
                host_ports=recipe.host_ports,
            )
        elif step.instruction == "WORKDIR":
            await self._sandbox(planned, ["mkdir", "-p", config.workdir], env, cwd, [], upper, log)
        else:
            await self._copy(planned, env, cwd, upper, log)

    async def _copy(
        self, planned: PlannedLayer, env: dict[str, str], cwd: str, upper: Path, log: LogSink
    ) -> None:
        """COPY/ADD: lay out what it reads in a context directory, then copy from there."""
        assert planned.step is not None and planned.parent is not None
        flags, rest = split_flags(planned.step.argument)
        argument = " ".join([*(f"--{k}={v}" for k, v in flags.items() if k != "from"), rest])
        context_dir = Path(tempfile.mkdtemp(dir=self.scratch, prefix="context-"))
        os.chmod(context_dir, 0o755)  # the sandbox reads it as an unprivileged id
        try:
            if planned.copy_from:
                sources = shlex.split(rest)[:-1]
                layers = self.store.lower_dirs(planned.copy_from)
                await asyncio.to_thread(materialize_from_layers, layers, sources, context_dir)
            elif planned.context is not None:
                await asyncio.to_thread(planned.context.materialize, context_dir)
            if not planned.copy_from and not _has_shell(self.store.lower_dirs(planned.parent)):
                # No shell to copy with (FROM scratch): copy on the host, straight into the layer.
                # Context files are plain files (no symlinks to follow out of the layer).
                script = copy_script(argument, cwd, context=str(context_dir), root=str(upper))
                await asyncio.to_thread(_run_on_host, script, planned.step.text)
                await asyncio.to_thread(self._shift, upper)
                return
            binds = [Bind(context_dir, CONTEXT_MOUNT, read_only=True)]
            await self._sandbox(
                planned, ["/bin/sh", "-c", copy_script(argument, cwd)], env, cwd, binds, upper, log
            )
        finally:
            shutil.rmtree(context_dir, ignore_errors=True)

    async def _sandbox(
        self,
        planned: PlannedLayer,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        binds: list[Bind],
        upper: Path,
        log: LogSink,
        secrets: dict[str, str] | None = None,
        host_ports: list[int] | None = None,
    ) -> None:
        """Run a step's command over its parent's layers, writing into `upper`."""
        assert planned.step is not None and planned.parent is not None
        spec = ContainerSpec(
            self.store.image_layers(planned.parent),
            argv,
            env=env,
            cwd=cwd,
            binds=binds,
            upper=upper,
            host_ports=list(host_ports or []),
        )
        output = StepOutput(log, secrets or {})
        try:
            container = await self.runtime.start(spec, output.write)
            status = await container.wait()
        finally:
            output.flush()
            _scrub(upper, [b.target for b in binds])
            shutil.rmtree(upper / HOST_FILES.lstrip("/"), ignore_errors=True)
        if not status.ok:
            shown = "\n".join(f"  {line}" for line in output.tail) or "  (no output)"
            raise ImageBuildError(
                f"Image build step failed: `{output.redact(planned.step.text)}` ended with {status.describe()}.\n"
                f"Last output:\n{shown}\n"
                "Fix the command (or the package name) in the image definition and run again; "
                "earlier steps are cached."
            )

    def _package_cache_binds(self, env: dict[str, str]) -> list[Bind]:
        if self.package_cache is None:
            return []
        binds = []
        for variable, name in PACKAGE_CACHES.items():
            source = self.package_cache / name
            source.mkdir(parents=True, exist_ok=True)
            if self.ids is not None and source.stat().st_uid != self.ids.uid:
                self.ids.shift_tree(source)  # a cache written before containers were unprivileged
            binds.append(Bind(source, f"{CACHE_MOUNT}/{name}", read_only=False))
            env.setdefault(variable, f"{CACHE_MOUNT}/{name}")
        # uv hard-links from its cache by default, which fails across the bind: copy quietly.
        env.setdefault("UV_LINK_MODE", "copy")
        return binds

    def _shift(self, upper: Path, skip_linked: bool = False) -> None:
        if self.ids is not None:
            self.ids.shift_tree(upper, skip_linked)


def _rebuilt_by_force(planned: PlannedLayer) -> bool:
    """force_build rebuilds the recipe's own steps and re-fetches registry images, not host bases."""
    if planned.base is not None:
        return planned.base.refresh
    return planned.step is not None or planned.build_function is not None


def _has_shell(layers: list[Path]) -> bool:
    return any(
        os.path.lexists(layer / "bin" / "sh") or os.path.lexists(layer / "usr/bin/sh") for layer in layers
    )


def _run_on_host(script: str, text: str) -> None:
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageBuildError(
            f"Image build step failed: `{text}` ended with exit code {result.returncode}.\n"
            f"Last output:\n  {result.stderr.strip()}\nFix the step and run again; earlier steps are cached."
        )


def _scrub(upper: Path, targets: list[str]) -> None:
    """Remove the empty mount points a sandbox's binds left in its upper directory."""
    for target in targets:
        path = upper / target.lstrip("/")
        while path != upper and path.is_dir() and not path.is_symlink():
            if any(path.iterdir()) or _opaque(path):
                break
            path.rmdir()
            path = path.parent


def _opaque(path: Path) -> bool:
    # Overlays mounted in a user namespace mark opaque directories with user.* attributes.
    for name in ("user.overlay.opaque", "trusted.overlay.opaque"):
        try:
            if os.getxattr(path, name) == b"y":
                return True
        except OSError:
            pass
    return False


def copy_script(argument: str, workdir: str, context: str = "", root: str = "") -> str:
    """A shell script doing Dockerfile `COPY src... dst` from the bound build context.

    `context` is where the context is (default: where a sandbox sees it), `root` is prepended
    to destinations (for a copy done on the host into a layer directory).
    """
    flags, rest = split_flags(argument)
    paths = shlex.split(rest)
    if "from" in flags:
        raise ImageBuildError(f"`COPY {argument}`: the builder resolves --from before making the script")
    unknown = set(flags) - {"chown", "chmod", "link"}
    if unknown:
        raise ImageBuildError(f"`COPY {argument}`: the flag --{sorted(unknown)[0]} is not supported by kiln")
    if len(paths) < 2:
        raise ImageBuildError(f"`COPY {argument}` needs a source and a destination")
    *sources, dest = paths
    if not dest.startswith("/"):
        dest = workdir.rstrip("/") + "/" + dest
    to_dir = dest.endswith("/") or len(sources) > 1
    quoted_dest = shlex.quote(root + dest)
    # Copied files belong to whoever copies (root in the image, as Docker's COPY), not to the
    # context's owners on the host.
    cp = "cp -a --no-preserve=ownership"
    lines = ["set -e", f"cd {shlex.quote(context or CONTEXT_MOUNT)}"]
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
            f'for s in "$@"; do if [ -d "$s" ]; then mkdir -p {quoted_dest} && {cp} "$s"/. {quoted_dest}; '
            f'else mkdir -p {target_dir} && {cp} "$s" {quoted_dest}; fi; done'
        )
    for flag, command in (("chown", "chown -R"), ("chmod", "chmod -R")):
        if flags.get(flag):
            lines.append(f"{command} {shlex.quote(flags[flag])} {quoted_dest}")
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
