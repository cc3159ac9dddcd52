"""Base images: where the layers under `FROM python:3.11.12-slim-bookworm` come from.

Providers, tried in order:
1. the local cache: a root filesystem placed at `$KILN_HOME/bases/<name>/rootfs`;
2. `scratch`: nothing at all;
3. `ghcr.io/astral-sh/uv:<version>`: made from the `uv` wheel on PyPI (`uv_image.py`);
4. `python:<version>[-slim][-<debian>]`: an offline base derived from this machine: its Debian
   userland (a hard-linked snapshot of /usr, /etc and /var) plus a CPython of the requested minor
   version installed at /usr/local — what the official `python:*-slim` images contain;
5. `debian:<codename>[-slim]` for this machine's own release: the same snapshot without Python;
6. anything else: pulled from its registry over the OCI distribution API (`registry.py`).
Every substitution is logged in the build output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kiln.errors import ImageBuildError
from kiln.images.base_image import BaseImage, BaseLayer
from kiln.images.pythons import HostPython, find_host_pythons, python_version_in
from kiln.images.registry import RegistryAuth, registry_image
from kiln.images.steps import ImageConfig, Step
from kiln.images.uv_image import uv_image

_PYTHON_REF = re.compile(
    r"^(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)(?:\.(\d+))?(?:-slim)?(?:-(\w+))?$"
)
_DEBIAN_REF = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:(\w+?)(?:-slim)?$")
_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_os_release() -> dict[str, str]:
    data: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                data[key] = value.strip().strip('"')
    except FileNotFoundError:
        pass
    return data


class BaseResolver:
    def __init__(
        self,
        home: Path,
        pythons: dict[str, HostPython] | None = None,
        network_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self._pythons = pythons
        self.network_env = network_env or {}

    @property
    def pythons(self) -> dict[str, HostPython]:
        if self._pythons is None:
            self._pythons = find_host_pythons()
        return self._pythons

    def resolve(self, reference: str, auth: RegistryAuth | None = None) -> BaseImage:
        cached = self.home / "bases" / reference.replace("/", "_").replace(":", "_") / "rootfs"
        if cached.is_dir():
            return BaseImage(
                reference,
                [
                    BaseLayer(
                        f"local-cache:{reference}", materialize=lambda dest: _link_contents(cached, dest)
                    )
                ],
                ImageConfig(env={"PATH": _PATH}),
                notice=f"Using {reference} from the local cache ({cached}).",
            )
        if reference == "scratch":
            return BaseImage(reference, [BaseLayer("scratch", materialize=lambda dest: None)], ImageConfig())
        uv = uv_image(reference, self.network_env)
        if uv is not None:
            return uv
        match = _PYTHON_REF.match(reference)
        if match is not None:
            minor = f"{match.group(1)}.{match.group(2)}"
            return self.python_base(reference, minor, match.group(4) or "")
        debian = _DEBIAN_REF.match(reference)
        if debian is not None and debian.group(1) == host_os_release().get("VERSION_CODENAME"):
            return self.debian_base(reference)
        offline = (
            f"kiln provides offline: python:<version>-slim (Python {self.available()}), "
            f"debian:{host_os_release().get('VERSION_CODENAME', '?')}, ghcr.io/astral-sh/uv:<version>, "
            f"scratch; or place a root filesystem at {cached}."
        )
        return registry_image(reference, auth, self.network_env, offline)

    def debian_base(self, reference: str) -> BaseImage:
        """This machine's own Debian release, as `debian:<codename>` images contain."""
        os_release = host_os_release()
        codename = os_release.get("VERSION_CODENAME", "unknown")
        return BaseImage(
            reference,
            [
                BaseLayer(
                    f"host-os:{os_release.get('ID', 'linux')}:{codename}:v2", materialize=snapshot_host_os
                )
            ],
            ImageConfig(env={"PATH": _PATH}, cmd=["bash"], python_version_info=_system_python()),
            notice=f"{reference}: using this machine's own {os_release.get('PRETTY_NAME', 'OS')} offline.",
        )

    def available(self) -> str:
        return ", ".join(sorted(self.pythons, key=lambda v: tuple(map(int, v.split("."))))) or "none found"

    def python_base(self, reference: str, minor: str, wanted_debian: str) -> BaseImage:
        python = self.pythons.get(minor)
        if python is None:
            raise ImageBuildError(
                f"{reference} needs CPython {minor}, which this machine cannot provide offline. "
                f"Available: Python {self.available()}. Ask for one of those "
                f'(e.g. `python_version="{self.available().split(", ")[-1]}"`), '
                f"or install CPython {minor} with pyenv or `uv python install {minor}`."
            )
        os_release = host_os_release()
        codename = os_release.get("VERSION_CODENAME", "unknown")
        notice = (
            f"{reference} is not in the local cache: using an offline base derived from this machine, "
            f"{os_release.get('PRETTY_NAME', 'its OS')} with CPython {python.version}."
        )
        if wanted_debian and wanted_debian != codename:
            notice += f" (Debian {wanted_debian} was asked for; this machine runs {codename}.)"
        config = ImageConfig(
            env={"PATH": _PATH, "LANG": "C.UTF-8", "PYTHON_VERSION": python.version},
            cmd=["python3"],
            python_version_info=python.describe(),
        )
        layers = [
            BaseLayer(f"host-os:{os_release.get('ID', 'linux')}:{codename}:v2", materialize=snapshot_host_os),
            BaseLayer(f"cpython:{python.version}:v1", materialize=lambda dest: install_python(python, dest)),
            BaseLayer(
                "python-setup:v1",
                step=Step(
                    "RUN",
                    f"ldconfig && python{python.minor} -m ensurepip --default-pip >/dev/null "
                    f"&& ln -sf python{python.minor} /usr/local/bin/python3 "
                    "&& ln -sf python3 /usr/local/bin/python && ln -sf pip3 /usr/local/bin/pip "
                    "&& rm -rf /root/.cache",
                ),
            ),
        ]
        return BaseImage(reference, layers, config, notice)


# What of this machine's root filesystem becomes the base: system files, not its users' data.
_HOST_DIRS = ["usr", "etc", "var"]
_HOST_EXCLUDE = {
    "usr/local",  # this machine's own installs; the image gets a clean /usr/local with CPython
    "etc/pip.conf",  # this machine's package indexes
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/log",
    "var/tmp",
    "var/lib/docker",
    "var/mail",
    # man-db re-indexes every manual page after each `apt-get install` (minutes on an overlay);
    # slim images have no manual pages, so skip it as they do.
    "var/lib/man-db/auto-update",
}
# What the official slim images configure: no docs or manuals from packages, no kept .debs.
_SLIM_FILES = {
    "etc/dpkg/dpkg.cfg.d/kiln-slim": "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
    "path-exclude /usr/share/man/*\npath-exclude /usr/share/groff/*\npath-exclude /usr/share/info/*\n",
    "etc/apt/apt.conf.d/kiln-clean": 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
    '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n',
}
_EMPTY_DIRS = {
    "root": 0o700, "home": 0o755, "tmp": 0o1777, "proc": 0o555, "sys": 0o555, "dev": 0o755,
    "run": 0o755, "mnt": 0o755, "media": 0o755, "opt": 0o755, "srv": 0o755, "boot": 0o755,
    "usr/local": 0o755, "usr/local/bin": 0o755, "usr/local/lib": 0o755, "usr/local/include": 0o755,
    "usr/local/share": 0o755, "usr/local/sbin": 0o755, "var/log": 0o755, "var/tmp": 0o1777,
    "var/lib/apt/lists/partial": 0o700, "var/cache/apt/archives/partial": 0o700,
}  # fmt: skip


def _system_python() -> str:
    """The Debian system Python a host snapshot contains (`Python 3.11`), or ""."""
    return python_version_in(Path("/"), {}, prefixes=("usr",))


def _link_contents(source: Path, dest: Path) -> ImageConfig:
    _cp(Path(source), dest, contents=True)
    return ImageConfig(env={"PATH": _PATH}, python_version_info=python_version_in(dest, {}))


def snapshot_host_os(dest: Path) -> None:
    """Hard-link this machine's userland into `dest` (a copy when on another filesystem)."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        source = Path("/") / name
        if source.is_symlink():
            os.symlink(os.readlink(source), dest / name)
        elif source.is_dir():
            _link_tree(source, dest / name)
    for name in _HOST_DIRS:
        _link_tree(
            Path("/") / name,
            dest / name,
            exclude={e[len(name) + 1 :] for e in _HOST_EXCLUDE if e.startswith(name + "/")},
        )
    for rel, mode in sorted(_EMPTY_DIRS.items()):
        path = dest / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    for rel, text in _SLIM_FILES.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)


def install_python(python: HostPython, dest: Path) -> None:
    """Copy a CPython (interpreter, stdlib, headers; no site-packages) into `dest`/usr/local."""
    local = dest / "usr" / "local"
    (local / "bin").mkdir(parents=True)
    (local / "lib").mkdir()
    (local / "include").mkdir()
    minor = python.minor
    src = python.prefix
    _link_tree(src / "bin" / f"python{minor}", local / "bin" / f"python{minor}")
    for lib in (src / "lib").glob("libpython*"):
        _link_tree(lib, local / "lib" / lib.name)
    _link_tree(src / "lib" / f"python{minor}", local / "lib" / f"python{minor}", exclude={"site-packages"})
    (local / "lib" / f"python{minor}" / "site-packages").mkdir()
    if (src / "include" / f"python{minor}").is_dir():
        _link_tree(src / "include" / f"python{minor}", local / "include" / f"python{minor}")
    if (src / "lib" / "pkgconfig").is_dir():
        _link_tree(src / "lib" / "pkgconfig", local / "lib" / "pkgconfig")


def _link_tree(source: Path, dest: Path, exclude: set[str] | None = None) -> None:
    """`cp -a --link` of `source` to `dest`, skipping relative paths in `exclude`."""
    exclude = exclude or set()
    if not exclude or source.is_symlink() or not source.is_dir():
        _cp(source, dest)
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copystat(source, dest)
    for entry in os.scandir(source):
        if entry.name in exclude:
            continue
        nested = {e[len(entry.name) + 1 :] for e in exclude if e.startswith(entry.name + "/")}
        _link_tree(Path(entry.path), dest / entry.name, nested)


def _cp(source: Path, dest: Path, contents: bool = False) -> None:
    """`cp -a` (hard links on the same filesystem) of `source`, or of its contents into `dest`."""
    same_fs = os.stat(source, follow_symlinks=False).st_dev == os.stat(dest.parent).st_dev
    flags = ["-a", "--link"] if same_fs else ["-a"]
    result = subprocess.run(
        ["cp", *flags, "--", f"{source}/." if contents else str(source), str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildError(f"could not copy {source} into a base layer: {result.stderr.strip()}")
