"""The Modal client's runtime dependencies for containers (`/__modal/deps`).

Images of builder version 2025.06 and later contain none of the client's dependencies (grpclib,
protobuf, …); Modal mounts them at /__modal/deps with a /pkg/sitecustomize.py that appends that
path. kiln builds the same tree once per (builder version, Python minor) with uv, from the pinned
requirements file shipped inside the client package, and overlays it on such containers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from pathlib import Path

from kiln.containers import DEPS, Layer
from kiln.errors import ContainerStartError
from kiln.images.pythons import client_package_dir, find_host_pythons
from kiln.staging import remove_stale_staging, staging_name

log = logging.getLogger("kiln.images")

# The image builder version kiln announces; 2025.06 images get the client's runtime deps mounted.
IMAGE_BUILDER_VERSION = "2025.06"
SITECUSTOMIZE = "import sys; sys.path.append('/__modal/deps')\n"


class ClientDeps:
    def __init__(self, root: Path, network_env: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)
        self.network_env = network_env
        self._locks: dict[str, asyncio.Lock] = {}

    async def layer(self, builder_version: str, python_minor: str) -> Layer:
        """A layer holding `__modal/deps/…` and `pkg/sitecustomize.py`, built on first use."""
        name = f"{builder_version}-cp{python_minor.replace('.', '')}"
        await self._ensure(name, builder_version, python_minor)
        return Layer(DEPS, name)

    async def _ensure(self, name: str, builder_version: str, python_minor: str) -> None:
        target = self.root / name
        if target.exists():
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not target.exists():
                await self._build(builder_version, python_minor, target)

    async def _build(self, builder_version: str, python_minor: str, target: Path) -> None:
        requirements = client_package_dir("modal") / "builder" / f"{builder_version}.txt"
        if not requirements.exists():
            raise ContainerStartError(
                f"the modal client ships no requirements for image builder {builder_version}"
            )
        staging = self.root / staging_name()
        deps = staging / "__modal" / "deps"
        deps.mkdir(parents=True)
        try:
            output = await self._install(requirements, deps, python_minor)
            if output is not None:
                # A pin the package index does not have (an index mirror lagging behind, say):
                # the same packages unpinned still satisfy the client, as kiln's own install shows.
                log.warning(
                    "pinned client dependencies unavailable; installing them unpinned:\n%s", output[-600:]
                )
                unpinned = staging / "requirements-unpinned.txt"
                unpinned.write_text(_unpin(requirements.read_text()))
                shutil.rmtree(deps)
                deps.mkdir()
                output = await self._install(unpinned, deps, python_minor)
                unpinned.unlink()
            if output is not None:
                raise ContainerStartError(
                    f"could not install the modal client's runtime dependencies for Python {python_minor}:\n"
                    + output[-2000:]
                    + "\nCheck that this machine can reach the Python package index, then run again."
                )
            (staging / "pkg").mkdir()
            (staging / "pkg" / "sitecustomize.py").write_text(SITECUSTOMIZE)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _install(self, requirements: Path, dest: Path, python_minor: str) -> str | None:
        """`uv pip install --target`; returns None on success, else uv's output."""
        from uv import find_uv_bin

        python = find_host_pythons().get(python_minor)
        argv = [
            find_uv_bin(), "pip", "install", "--no-deps", "--compile-bytecode",
            "-r", str(requirements), "--target", str(dest),
            # Wheels only, for the interpreter's own platform: the image's userland is this machine's.
            "--only-binary", ":all:",
            "--python", str(python.prefix / "bin" / f"python{python_minor}") if python else python_minor,
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **self.network_env},
        )
        output, _ = await process.communicate()
        return None if process.returncode == 0 else output.decode(errors="replace")


def _unpin(requirements: str) -> str:
    """`name==1.2 ; marker` → `name ; marker`, one line per distinct requirement."""
    lines = []
    for line in requirements.splitlines():
        spec, _, marker = line.partition(";")
        name = re.split(r"[=<>!~ ]", spec.strip(), maxsplit=1)[0]
        if name:
            lines.append(f"{name} ; {marker.strip()}" if marker.strip() else name)
    return "\n".join(dict.fromkeys(lines)) + "\n"
