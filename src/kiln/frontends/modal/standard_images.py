"""Modal's standard image steps as Dockerfile lines, for images kiln composes itself.

fal environments start from `Image.debian_slim(python_version)` and install each requirements
layer as `Image.uv_pip_install(...)` does, line for line: kiln keys a layer by its parent and its
step's text, so a fal requirement set and a Modal image installing the same packages on the same
base share their layers (built once, stored once). The lines mirror the client's recipes for the
image builder version kiln announces; the versions in them (Debian release, packaging tools) are
read from the client's own `base-images.json`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from functools import cache
from typing import Any

from kiln.frontends.modal.client_deps import IMAGE_BUILDER_VERSION
from kiln.images.pythons import client_package_dir

UV_ROOT = "/.uv"


@cache
def _base_image_config(group: str) -> Any:
    with open(client_package_dir("modal") / "builder" / "base-images.json") as f:
        return json.load(f)[group][IMAGE_BUILDER_VERSION]


def debian_slim(python_minor: str) -> list[str]:
    """`Image.debian_slim(python_version=python_minor)`: the official slim Python image with a
    compiler toolchain and current packaging tools (the FROM's patch version does not matter to
    kiln: every `python:3.X` resolves to the same base layers)."""
    return [
        f"FROM python:{python_minor}-slim-{_base_image_config('debian')}",
        "RUN apt-get update",
        "RUN apt-get install -y gcc gfortran build-essential",
        f"RUN pip install --upgrade {_base_image_config('package_tools')}",
        "RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections",
        f'CMD ["sleep", "{48 * 3600}"]',
    ]


def uv_pip_install(packages: Iterable[str], options: str = "") -> list[str]:
    """`.uv_pip_install(*packages)` (with the client's default uv): uv copied in, then one
    install into the image's first `python` on PATH, bytecode compiled. `options` go before the
    packages, as the client's `extra_options` do."""
    args = ["--python $(command -v python)", "--compile-bytecode", *([options] if options else [])]
    args.extend(shlex.quote(p) for p in sorted(packages))
    return [
        f"COPY --from=ghcr.io/astral-sh/uv:latest /uv {UV_ROOT}/uv",
        f"RUN {UV_ROOT}/uv pip install {' '.join(args)}",
    ]
