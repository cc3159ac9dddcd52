"""Planning a build: every layer's key, computed before anything runs.

A key is a hash of the parent's key, the step's text, and whatever else the step reads: the
context files its COPY sources match, the image a `COPY --from` reads, the build arguments and
build secrets in scope for a RUN, a build function's source, globals and arguments. So a request
whose layers all exist does no work, and a changed step rebuilds itself and what follows it.
Planning reads nothing but the Dockerfile and the recipe (no network, no layer contents).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import ImageBuildError
from kiln.images.base import BaseResolver
from kiln.images.base_image import BaseLayer
from kiln.images.context import BuildContext
from kiln.images.keys import layer_key
from kiln.images.registry import RegistryAuth
from kiln.images.steps import ImageConfig, Step, parse_arg, parse_dockerfile, parse_from, split_flags

LogSink = Callable[[str], None]
# Every image starts with a base layer, so this reaches every key. Format 2: layers are owned by
# the containers' unprivileged ids (root inside = host 100000); layers of format 1 were owned by
# host root, and are rebuilt rather than reused.
LAYER_FORMAT = {"layer_format": "2"}

# Runs a build function over a parent image: (parent key, writable upper dir, log) → None.
BuildRunner = Callable[[str, Path, LogSink], Awaitable[None]]
_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class BuildFunction:
    """An `Image.run_function` step: what identifies it, and how to run it."""

    label: str
    identity: dict[str, str]  # enters the key: source, globals and arguments digests, …
    run: BuildRunner


@dataclass
class Recipe:
    """What to build: Dockerfile lines on top of a parent layer (or a FROM reference)."""

    dockerfile: list[str]
    parent_key: str | None = None
    context: BuildContext = field(default_factory=BuildContext)
    secret_env: dict[str, str] = field(default_factory=dict)  # present during RUN steps only
    secret_digest: str = ""  # what the secrets contribute to keys
    build_args: dict[str, str] = field(default_factory=dict)
    registry_auth: RegistryAuth | None = None
    build_function: BuildFunction | None = None
    force_build: bool = False
    ignore_cache_nonce: str = ""
    # Ports of the host's loopback its RUN steps may reach (a local index or wheel server that the
    # requirements name); not part of any key. Functions' containers never get such ports.
    host_ports: list[int] = field(default_factory=list)
    # Host directories its RUN steps see read-only (a local `--find-links` folder); not in keys.
    run_binds: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class PlannedLayer:
    key: str
    parent: str | None
    label: str  # what the log shows
    step: Step | None = None
    base: BaseLayer | None = None
    base_config: ImageConfig | None = None  # a base layer's config, unless its files say otherwise
    args: dict[str, str] = field(default_factory=dict)  # build arguments in scope (RUN env)
    context: BuildContext | None = None  # what a COPY from the context reads
    copy_from: str = ""  # the key of the image a `COPY --from` reads
    build_function: BuildFunction | None = None


@dataclass
class Plan:
    top_key: str  # the image: its top layer
    layers: list[PlannedLayer]  # every layer the image needs (its chain, and images COPY reads)
    notices: list[str] = field(default_factory=list)


def plan(recipe: Recipe, bases: BaseResolver) -> Plan:
    """Compute every layer's key without building anything."""
    return _Planner(recipe, bases).run()


class _Planner:
    def __init__(self, recipe: Recipe, bases: BaseResolver) -> None:
        self.recipe = recipe
        self.bases = bases
        self.layers: list[PlannedLayer] = []
        self.notices: list[str] = []
        self.parent: str | None = recipe.parent_key
        self.args: dict[str, str] = {}
        self.stages: list[tuple[str, str | None]] = []  # (name, top key) of finished stages
        self.stage_name = ""
        self.in_stage = False  # a FROM was seen (the recipe's own parent is no stage)
        self.base_inputs: dict[str, str] = {}
        if recipe.ignore_cache_nonce:
            self.base_inputs["ignore_cache"] = recipe.ignore_cache_nonce

    def run(self) -> Plan:
        recipe = self.recipe
        for step in parse_dockerfile(recipe.dockerfile):
            if step.instruction == "FROM":
                self._from(step)
            elif step.instruction == "ARG":
                name, default = parse_arg(step.argument)
                self.args[name] = recipe.build_args.get(name, default or "")
            elif self.parent is None:
                raise ImageBuildError(f"the first instruction must be FROM (got `{step.text}`)")
            else:
                self._step(step)
        if recipe.build_function is not None:
            self._build_function(recipe.build_function)
        if self.parent is None:
            raise ImageBuildError("an image needs a FROM instruction or a base image")
        # An image that adds nothing to its parent is its parent.
        return Plan(self.parent, self.layers, self.notices)

    def _add(self, layer: PlannedLayer) -> None:
        self.layers.append(layer)
        self.parent = layer.key

    def _from(self, step: Step) -> None:
        reference, name = parse_from(step.argument)
        self._end_stage()
        self.in_stage = True
        self.stage_name = name
        self.args = {}  # a build stage sees only the ARGs it declares
        named = dict(self.stages)
        if reference == "base":
            if self.recipe.parent_key is None:
                raise ImageBuildError("`FROM base` needs a base image, but none was given")
            self.parent = self.recipe.parent_key
        elif reference in named:
            self.parent = named[reference]
        else:
            self.parent = self._base_image(reference)

    def _end_stage(self) -> None:
        if self.in_stage and self.parent is not None:
            self.stages.append((self.stage_name or str(len(self.stages)), self.parent))

    def _base_image(self, reference: str) -> str:
        """Plan a base image's layers (a chain of its own); returns its top key."""
        base = self.bases.resolve(reference, self.recipe.registry_auth)
        if base.notice and base.notice not in self.notices:
            self.notices.append(base.notice)
        parent: str | None = None
        for base_layer in base.layers:
            # A cache-ignoring build pulls registry images again; host-derived bases stay.
            inputs = {**(self.base_inputs if base_layer.refresh else {}), **LAYER_FORMAT}
            key = layer_key(parent, f"BASE {base_layer.name}", inputs)
            if all(layer.key != key for layer in self.layers):
                self.layers.append(
                    PlannedLayer(
                        key,
                        parent,
                        f"base: {base_layer.name}",
                        step=base_layer.step,
                        base=base_layer,
                        base_config=base.config.copy(),
                    )
                )
            parent = key
        assert parent is not None, f"base image {reference} has no layers"
        return parent

    def _step(self, step: Step) -> None:
        inputs = dict(self.base_inputs)
        layer = PlannedLayer("", self.parent, step.text, step=step)
        if step.instruction in ("COPY", "ADD"):
            flags, rest = split_flags(step.argument)
            sources = _copy_sources(rest, step)
            if step.instruction == "ADD":
                _refuse_add_features(sources, step)
            if "from" in flags:
                layer.copy_from = self._copy_source_image(flags["from"])
                inputs["from"] = layer.copy_from
            else:
                layer.context = self.recipe.context.subset(sources)
                inputs["context"] = layer.context.digest()
        elif step.instruction == "RUN":
            if self.args:
                inputs["args"] = _digest(sorted(self.args.items()))
            if self.recipe.secret_digest:
                inputs["secrets"] = self.recipe.secret_digest
        layer.args = dict(self.args)
        layer.key = layer_key(self.parent, step.text, inputs)
        self._add(layer)

    def _copy_source_image(self, source: str) -> str:
        named = dict(self.stages)
        found = named.get(source)
        return found if found is not None else self._base_image(source)

    def _build_function(self, function: BuildFunction) -> None:
        if self.parent is None:
            raise ImageBuildError("Image.run_function needs a base image")
        inputs = {**self.base_inputs, **function.identity}
        if self.recipe.secret_digest:
            inputs["secrets"] = self.recipe.secret_digest
        key = layer_key(self.parent, f"RUN_FUNCTION {function.label}", inputs)
        self._add(PlannedLayer(key, self.parent, f"run_function: {function.label}", build_function=function))


def _copy_sources(argument: str, step: Step) -> list[str]:
    words = shlex.split(argument)
    if len(words) < 2:
        raise ImageBuildError(f"`{step.text}` needs a source and a destination")
    return words[:-1]


def _refuse_add_features(sources: list[str], step: Step) -> None:
    for source in sources:
        if "://" in source:
            raise ImageBuildError(f"`{step.text}`: ADD of URLs is not supported by kiln; use `RUN curl -o …`")
        if source.endswith(_ARCHIVES):
            raise ImageBuildError(
                f"`{step.text}`: ADD does not unpack archives in kiln; use `COPY` and `RUN tar -xf …`"
            )


def _digest(items: object) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()
