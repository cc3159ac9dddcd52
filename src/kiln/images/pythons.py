"""CPython installations on this machine that can be copied into an image's /usr/local."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostPython:
    version: str  # "3.11.7"
    prefix: Path  # contains bin/python3.X and lib/python3.X/os.py

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def describe(self) -> str:
        """`python -VV` of this interpreter (what images report as python_version_info)."""
        return _describe(self.prefix / "bin" / f"python{self.minor}", self.version)


@functools.cache
def _describe(interpreter: Path, version: str) -> str:
    # Asked on every request for a python base image: run the interpreter once per process.
    out = subprocess.run(
        [str(interpreter), "-VV"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or f"Python {version}"


def _candidate_prefixes() -> list[Path]:
    roots = [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"]
    roots.append(Path(os.environ.get("UV_PYTHON_INSTALL_DIR", Path.home() / ".local/share/uv/python")))
    prefixes: list[Path] = []
    for root in roots:
        if root.is_dir():
            prefixes.extend(sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()))
    return prefixes


@functools.cache
def find_host_pythons() -> dict[str, HostPython]:
    """Relocatable CPythons found on this machine (pyenv, uv), newest patch per minor.

    Looked up once per process (container starts ask for it): a CPython installed later is
    seen after a server restart.
    """
    found: dict[str, HostPython] = {}
    for prefix in _candidate_prefixes():
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", prefix.name)
        if not match or "t" in prefix.name.split(match.group(0))[-1][:1]:  # skip free-threaded builds
            continue
        version = match.group(0)
        minor = f"{match.group(1)}.{match.group(2)}"
        if (
            not (prefix / "bin" / f"python{minor}").exists()
            or not (prefix / "lib" / f"python{minor}" / "os.py").exists()
        ):
            continue
        current = found.get(minor)
        if current is None or _as_tuple(version) > _as_tuple(current.version):
            found[minor] = HostPython(version, prefix)
    return found


def _as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def client_package_dir(package: str) -> Path:
    """Where an installed package lives, without importing it (importing `modal` costs seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {package} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def python_version_in(
    root: Path, env: dict[str, str], prefixes: tuple[str, ...] = ("usr/local", "usr")
) -> str:
    """What an image's `python -VV` would start with ("Python 3.11.7" or "Python 3.11"), read from
    its files (official python images set PYTHON_VERSION), or "" when it has no CPython."""
    if re.fullmatch(r"3\.\d+(\.\d+)?", env.get("PYTHON_VERSION", "")):
        return f"Python {env['PYTHON_VERSION']}"
    for prefix in prefixes:
        found = [p.parent.name for p in (root / prefix / "lib").glob("python3.*/os.py")]
        minors = sorted((int(name[len("python3.") :]) for name in found if name[8:].isdigit()), reverse=True)
        if minors:
            return f"Python 3.{minors[0]}"
    return ""
