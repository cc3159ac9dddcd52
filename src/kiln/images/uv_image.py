"""`ghcr.io/astral-sh/uv:<version>` without a registry: the same files, from the `uv` wheel.

`uv_pip_install` and `uv_sync` copy `/uv` out of that image (`COPY --from=ghcr.io/astral-sh/uv:…
/uv /.uv/uv`). The image holds nothing but the static `uv` and `uvx` binaries, which the `uv`
wheel on PyPI also ships; kiln builds the image from the wheel (or from its own copy of uv when
the versions match) and says so in the build log. `latest` means the uv kiln itself runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from kiln.errors import ImageBuildError
from kiln.images.base_image import BaseImage, BaseLayer
from kiln.images.steps import ImageConfig

_UV_REF = re.compile(r"^ghcr\.io/astral-sh/uv:(latest|\d+\.\d+\.\d+)$")
_BINARIES = ("uv", "uvx")


def uv_image(reference: str, network_env: dict[str, str]) -> BaseImage | None:
    """The image for a `ghcr.io/astral-sh/uv:<version>` reference; None for other references."""
    match = _UV_REF.match(reference)
    if match is None:
        return None
    own = importlib.metadata.version("uv")
    version = own if match.group(1) == "latest" else match.group(1)
    source = "kiln's own uv" if version == own else f"the uv=={version} wheel from PyPI"
    return BaseImage(
        reference,
        [
            BaseLayer(
                f"uv-wheel:{version}",
                materialize=lambda dest: _materialize(version, own, dest, network_env),
            )
        ],
        ImageConfig(env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}),
        notice=f"{reference}: no registry is reachable, so kiln builds it from {source} "
        f"(the image holds only /uv and /uvx, which the wheel ships).",
    )


def _materialize(version: str, own: str, dest: Path, network_env: dict[str, str]) -> None:
    from uv import find_uv_bin

    uv = find_uv_bin()
    if version == own:
        bin_dir = Path(uv).parent
        _install(bin_dir, dest)
        return
    with tempfile.TemporaryDirectory(prefix="kiln-uv-") as tmp:
        result = subprocess.run(
            [uv, "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
             "--target", tmp, f"uv=={version}"],
            capture_output=True, text=True, check=False, env={**os.environ, **network_env},
        )  # fmt: skip
        if result.returncode != 0:
            raise ImageBuildError(
                f"could not fetch the uv=={version} wheel to provide ghcr.io/astral-sh/uv:{version}:\n"
                f"{result.stderr.strip()[-1500:]}\nCheck the version (`uv_version=`) and that PyPI is reachable."
            )
        _install(Path(tmp) / "bin", dest)


def _install(bin_dir: Path, dest: Path) -> None:
    for name in _BINARIES:
        source = bin_dir / name
        if source.exists():
            shutil.copy2(source, dest / name)
    if not (dest / "uv").exists():
        raise ImageBuildError(f"the uv wheel has no uv binary (looked in {bin_dir})")
