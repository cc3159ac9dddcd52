"""fal environments (`requirements`) as kiln images.

A fal `virtualenv` definition becomes an image recipe: Modal's `Image.debian_slim` of the
requested Python minor version, then one `uv pip install` layer per requirements layer (fal sends a flat list as one
layer, a list of lists as several), then the runner's agent packages in a directory of their own
(`/opt/kiln-fal-agent`, on `PYTHONPATH` after the user's packages, so a user's pin always wins).
Each list item is one argument of `uv pip install`, as fal's client documents (options and their
values are separate items, or joined with `=`), so options anywhere in a layer apply to it.

The environment's ID (`env_id`) is isolate's own key for the definition (computed by isolate's
code, so it is exactly what fal's client expects); the image's layers are keyed by kiln's
planner as every image is, so an unchanged requirement set builds nothing, and a layer of plain
packages is shared with a Modal image that installs them with `uv_pip_install` on debian_slim.

`${NAME}` in a requirement is replaced at build time by the value of the fal secret NAME: after the
keys are computed (a secret's value never enters a key), passed to the build in the environment
of its RUN step only (never on a command line, in a layer, or in the log).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import InvalidRequest, Unsupported
from kiln.frontends.modal.standard_images import UV_ROOT, debian_slim, uv_pip_install

AGENT_DIR = "/opt/kiln-fal-agent"
# What the runner needs beside the user's environment to unpickle and start a fal App: fal's
# client pickles the App with cloudpickle, and unpickling it imports grpc.
AGENT_PACKAGES = ("cloudpickle==3.1.1", "grpcio>=1.64,<2")
_SECRET = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PYTHON = re.compile(r"^3\.\d+$")
_FIND_LINKS = re.compile(r"^(--find-links|-f)=(.+)$")
_LOOPBACK = re.compile(r"://(?:[^@/\s]*@)?(?:127\.0\.0\.1|localhost|\[::1\]):(\d+)")


@dataclass
class FalEnvironment:
    """One `EnvironmentDefinition` of kind `virtualenv`."""

    python_version: str
    layers: list[list[str]] = field(default_factory=list)
    force: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # as sent (for isolate's key)

    @classmethod
    def from_definition(cls, kind: str, config: dict[str, Any], force: bool = False) -> FalEnvironment:
        if kind not in ("virtualenv", ""):
            raise Unsupported(
                f"kiln builds fal environments of kind 'virtualenv' (requirements=...); kind {kind!r} "
                "is not supported yet: use requirements=[...] on the app instead"
            )
        resolver = config.get("resolver")
        if resolver not in (None, "uv"):
            raise InvalidRequest(f"resolver={resolver!r}: fal environments are built with uv; drop resolver=")
        python = str(config.get("python_version") or "")
        if not _PYTHON.match(python):
            raise InvalidRequest(f"python_version={python!r} is not a Python version like '3.11'")
        raw = config.get("requirements") or []
        if raw and all(isinstance(item, str) for item in raw):
            layers = [list(raw)]
        elif all(isinstance(layer, list) and all(isinstance(i, str) for i in layer) for layer in raw):
            layers = [list(layer) for layer in raw]
        else:
            raise InvalidRequest("requirements must be a list of strings, or a list of lists of strings")
        return cls(python, layers, force, dict(config))

    @property
    def env_id(self) -> str:
        """isolate's cache key for this definition (`force` is not part of it)."""
        from isolate.backends.virtualenv import VirtualPythonEnvironment

        config = {k: v for k, v in self.config.items() if k != "force"}
        return str(VirtualPythonEnvironment.from_config(config).key)

    def local_find_links(self) -> dict[str, str]:
        """Directories of this machine that `--find-links=DIR` names → where the build sees them
        (read-only). fal's client sends the option as the user wrote it, with a path on the user's
        machine, which is this one when kiln serves on loopback."""
        found: dict[str, str] = {}
        for layer in self.layers:
            for item in layer:
                match = _FIND_LINKS.match(item)
                if match and os.path.isabs(match.group(2)) and os.path.isdir(match.group(2)):
                    found.setdefault(match.group(2), f"/.kiln-find-links/{len(found)}")
        return found

    def loopback_ports(self) -> list[int]:
        """Ports of this machine's loopback that the requirements name (a local index, wheel or
        git server): the build may reach those, and nothing else on the host."""
        ports = {int(m.group(1)) for layer in self.layers for item in layer for m in _LOOPBACK.finditer(item)}
        return sorted(p for p in ports if 0 < p < 65536)

    def needs_git(self) -> bool:
        return any("git+" in item for layer in self.layers for item in layer)

    def secret_names(self) -> set[str]:
        """The secrets the requirements name (`${NAME}`)."""
        return {m.group(1) for layer in self.layers for item in layer for m in _SECRET.finditer(item)}

    def dockerfile(self) -> list[str]:
        """The image's Dockerfile: Modal's `Image.debian_slim(python_version)`, then each layer as
        `.uv_pip_install(...)` writes it (bytecode compiled, whatever the definition's `compile_bytecode` says), so
        a layer of plain packages is the very layer a Modal image installing them on debian_slim
        has (`frontends/modal/standard_images.py`). A layer with options keeps its items' order
        (an option's value follows it). `${NAME}` stays as a shell expansion of the RUN step's
        environment, where the build puts the secret's value."""
        lines = debian_slim(self.python_version)
        if self.needs_git():  # uv clones `git+…` requirements with git, which the base lacks
            lines.append(
                "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git ca-certificates"
                " >/dev/null && rm -rf /var/lib/apt/lists/*"
            )
        local = self.local_find_links()
        for raw in self.layers:
            layer = [_relink(item, local) for item in raw]
            if any(_SECRET.search(item) for item in layer):
                copy_uv, run = uv_pip_install([])
                lines += [copy_uv, f"RUN {_with_secrets(run.removeprefix('RUN '), layer)}"]
            elif any(item.startswith("-") for item in layer):
                lines += uv_pip_install([], options=" ".join(shlex.quote(item) for item in layer))
            elif layer:
                lines += uv_pip_install(layer)
        if not any(line.startswith("COPY --from=ghcr.io/astral-sh/uv") for line in lines):
            lines.append(uv_pip_install([])[0])  # no requirements: uv only for the agent
        agent = " ".join(shlex.quote(p) for p in AGENT_PACKAGES)
        lines.append(
            f"RUN {UV_ROOT}/uv pip install --python $(command -v python) --target {AGENT_DIR} {agent}"
        )
        return lines


def _relink(item: str, local: dict[str, str]) -> str:
    match = _FIND_LINKS.match(item)
    if match and match.group(2) in local:
        return f"{match.group(1)}={local[match.group(2)]}"
    return item


# Options of `uv pip install` that take a value (as the next item when not joined with `=`).
_VALUED = {
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
    "-r", "--requirement", "--index-strategy", "--no-binary", "--only-binary", "--prerelease",
    "--resolution", "--keyring-provider", "--python-platform", "-p", "--python",
}  # fmt: skip


def _with_secrets(uv: str, layer: list[str]) -> str:
    """A layer whose items name secrets installs from a requirements file written by the step
    itself (with the shell's builtin printf) and removed before the step ends: the secrets' values
    are never on a command line (where the host's `ps` would show them) nor in the layer."""
    lines, pending = [], ""
    for item in layer:
        if pending:
            lines.append(f"{pending} {item}")
            pending = ""
        elif item in _VALUED:
            pending = item
        else:
            lines.append(item)
    if pending:
        lines.append(pending)
    words = " ".join(_double_quoted(line) for line in lines)
    return f'f=$(mktemp) && trap \'rm -f "$f"\' EXIT && printf \'%s\\n\' {words} > "$f" && {uv} -r "$f"'


def _double_quoted(text: str) -> str:
    """`text` in double quotes, with `${NAME}` (a secret in the step's environment) expanded
    by the shell and every other special character escaped."""
    escaped = re.sub(r'([\\"`])', r"\\\1", text)
    escaped = re.sub(r"\$(?!\{[A-Za-z_][A-Za-z0-9_]*\})", r"\\$", escaped)
    return f'"{escaped}"'
