"""Base images: where the layers under `FROM python:3.11.12-slim-bookworm` come from.

Providers, tried in order:
1. the local cache: a root filesystem placed at `$KILN_HOME/bases/<name>/rootfs`;
2. `scratch`: nothing at all;
3. `ghcr.io/astral-sh/uv:<version>`: made from the `uv` wheel on PyPI (`uv_image.py`);
4. `python:<version>[-slim][-<debian>]`: Debian's own packages for that release
   (`mmdebstrap --variant=minbase` from the machine's apt mirror, plus the libraries CPython
   needs) and a CPython of the requested minor version found on this machine, copied to
   /usr/local — what the official `python:*-slim` images contain;
5. `debian:<codename>[-slim]`: the same Debian root filesystem without Python;
6. anything else: pulled from its registry over the OCI distribution API (`registry.py`).
When no Debian archive is reachable, 4 and 5 fall back to a *filtered copy* of this machine's
userland (never its /etc/shadow, /etc/gshadow, ssh host keys, /root, machine-id or KILN_HOME).
Every substitution is logged in the build output. The builder shifts the owners of files made on
the host into the containers' id range; the host fallback's hard links to the host's own files
are left alone (read-only inside, like any file of an unmapped owner).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import urllib.request
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
# What `python:*-slim` adds to Debian's minbase: certificates, netbase, tzdata, and the shared
# libraries of CPython's extension modules (ssl, sqlite3, readline, curses, ctypes, lzma, …).
_PYTHON_PACKAGES = {
    "bookworm": "ca-certificates netbase tzdata libssl3 libsqlite3-0 libreadline8 libncursesw6 "
    "libbz2-1.0 liblzma5 zlib1g libffi8 libuuid1 libexpat1 libgdbm6 libcrypt1",
    "trixie": "ca-certificates netbase tzdata libssl3t64 libsqlite3-0 libreadline8t64 libncursesw6 "
    "libbz2-1.0 liblzma5 zlib1g libffi8 libuuid1 libexpat1 libgdbm6t64 libcrypt1",
}


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
        self.mirror = os.environ.get("KILN_DEBIAN_MIRROR") or apt_mirror()

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
                        f"local-cache:{reference}", materialize=lambda dest: _copy_contents(cached, dest)
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
        if debian is not None and (
            debian.group(1) == host_os_release().get("VERSION_CODENAME")
            or archive_reachable(self.mirror, debian.group(1))
        ):
            return self.debian_base(reference, debian.group(1))
        offline = (
            f"kiln provides offline: python:<version>-slim (Python {self.available()}), "
            f"debian:{host_os_release().get('VERSION_CODENAME', '?')}, ghcr.io/astral-sh/uv:<version>, "
            f"scratch; or place a root filesystem at {cached}."
        )
        return registry_image(reference, auth, self.network_env, offline)

    def os_layer(self, codename: str) -> tuple[BaseLayer, str]:
        """The Debian root filesystem of `codename`, and what the build log says about it."""
        if archive_reachable(self.mirror, codename):
            packages = _PYTHON_PACKAGES.get(codename, _PYTHON_PACKAGES["bookworm"])
            return (
                BaseLayer(
                    f"debian:{codename}:mmdebstrap:v1",
                    materialize=lambda dest: debootstrap(codename, self.mirror, packages, dest),
                ),
                f"Debian {codename} from {self.mirror} (mmdebstrap)",
            )
        os_release = host_os_release()
        host = os_release.get("VERSION_CODENAME", "unknown")
        return (
            BaseLayer(
                f"host-os:{os_release.get('ID', 'linux')}:{host}:filtered:v4",
                materialize=lambda dest: snapshot_host_os(dest, self.home),
                links_host_files=True,
            ),
            f"no Debian archive is reachable at {self.mirror}: using a filtered copy of this "
            f"machine's {os_release.get('PRETTY_NAME', 'OS')} (without its secrets) instead of Debian "
            f"{codename}",
        )

    def debian_base(self, reference: str, codename: str) -> BaseImage:
        """`debian:<codename>`: Debian's minbase of that release."""
        layer, source = self.os_layer(codename)
        return BaseImage(
            reference,
            [layer],
            ImageConfig(env={"PATH": _PATH}, cmd=["bash"], python_version_info=""),
            notice=f"{reference}: {source}.",
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
        codename = wanted_debian or host_os_release().get("VERSION_CODENAME", "bookworm")
        os_layer, source = self.os_layer(codename)
        notice = f"{reference}: {source}, with CPython {python.version} from this machine."
        config = ImageConfig(
            env={"PATH": _PATH, "LANG": "C.UTF-8", "PYTHON_VERSION": python.version},
            cmd=["python3"],
            python_version_info=python.describe(),
        )
        layers = [
            os_layer,
            BaseLayer(f"cpython:{python.version}:v2", materialize=lambda dest: install_python(python, dest)),
            BaseLayer(
                "python-setup:v2",
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
    # This machine's secrets: account passwords, host keys, its identity, TLS private keys.
    "etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-", "etc/ssh", "etc/ssl/private",
    "etc/machine-id", "var/lib/dbus/machine-id", "etc/sudoers", "etc/sudoers.d",
    "etc/security/opasswd", "etc/subuid", "etc/subgid", "etc/kiln", "var/lib/kiln",
    "var/lib/sss", "var/lib/private", "var/spool", "var/backups", "var/cache/apt", "var/cache/man",
    # Other services' data.
    "var/lib/postgresql", "var/lib/mysql", "var/lib/redis", "var/lib/mongodb", "var/www",
}  # fmt: skip
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


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for path, pattern in (
        ("/etc/apt/sources.list.d/debian.sources", r"^URIs:\s*(\S+)"),
        ("/etc/apt/sources.list", r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)"),
    ):
        try:
            match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        except OSError:
            continue
        if match:
            return match.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


@functools.cache
def archive_reachable(mirror: str, codename: str) -> bool:
    """Whether `mirror` serves `codename` (its Release file answers), asked once per process."""
    try:
        request = urllib.request.Request(f"{mirror}/dists/{codename}/Release", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def debootstrap(codename: str, mirror: str, packages: str, dest: Path) -> None:
    """Debian's minbase of `codename` with `packages`, from `mirror`, into the empty `dest`."""
    excludes = [
        "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/groff/*",
        "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/locale/*",
    ]  # fmt: skip
    argv = [
        "mmdebstrap", "--quiet", "--variant=minbase", f"--include={packages.replace(' ', ',')}",
        *(f"--dpkgopt={e}" for e in excludes), codename, str(dest), mirror,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ImageBuildError(
            f"could not make Debian {codename} from {mirror} with mmdebstrap "
            f"(exit {result.returncode}):\n{tail}\n"
            "Check that the mirror is reachable (KILN_DEBIAN_MIRROR names another) and that "
            "mmdebstrap is installed (`apt-get install mmdebstrap`, or scripts/install)."
        )
    for rel in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (dest / rel).glob("*"):
            if entry.is_file():
                entry.unlink()
    _finish_rootfs(dest)


def _finish_rootfs(dest: Path) -> None:
    """What every kiln base has: the usual empty directories, slim dpkg/apt settings, and no
    identity of its own (machine-id is made at first boot, as in Docker images)."""
    for rel, mode in sorted(_EMPTY_DIRS.items()):
        path = dest / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    for rel, text in _SLIM_FILES.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    machine_id = dest / "etc" / "machine-id"
    if machine_id.exists() or machine_id.is_symlink():
        machine_id.unlink()


def _copy_contents(source: Path, dest: Path) -> ImageConfig:
    _cp(Path(source), dest, contents=True)
    return ImageConfig(env={"PATH": _PATH}, python_version_info=python_version_in(dest, {}))


def snapshot_host_os(dest: Path, kiln_home: Path | None = None) -> None:
    """This machine's userland in `dest`, without its secrets (see `_HOST_EXCLUDE`): the fallback
    when no Debian archive is reachable. /usr is hard links (cheap; the builder leaves their
    owners alone, so those files are read-only inside, and overlay never writes a lower file;
    its directories are new, and the container's); /etc and /var are copies (dpkg and apt write
    there), with fresh /etc/shadow and /etc/gshadow that lock every account."""
    home = os.path.realpath(kiln_home) if kiln_home is not None else ""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        source = Path("/") / name
        if source.is_symlink():
            os.symlink(os.readlink(source), dest / name)
        elif source.is_dir():
            _copy_tree(source, dest / name, link=True)
    for name in _HOST_DIRS:
        exclude = {e[len(name) + 1 :] for e in _HOST_EXCLUDE if e.startswith(name + "/")}
        if home.startswith(f"/{name}/"):
            exclude.add(home[len(name) + 2 :])
        _copy_tree(Path("/") / name, dest / name, exclude=exclude, link=name == "usr")
    for accounts, shadow in (("passwd", "shadow"), ("group", "gshadow")):
        names = [line.split(":", 1)[0] for line in (dest / "etc" / accounts).read_text().splitlines() if line]
        fields = ":*:19000:0:99999:7:::" if shadow == "shadow" else ":*::"
        (dest / "etc" / shadow).write_text("".join(f"{n}{fields}\n" for n in names))
        os.chmod(dest / "etc" / shadow, 0o640)
    _finish_rootfs(dest)


def install_python(python: HostPython, dest: Path) -> None:
    """Copy a CPython (interpreter, stdlib, headers; no site-packages) into `dest`/usr/local."""
    local = dest / "usr" / "local"
    (local / "bin").mkdir(parents=True)
    (local / "lib").mkdir()
    (local / "include").mkdir()
    minor = python.minor
    src = python.prefix
    _copy_tree(src / "bin" / f"python{minor}", local / "bin" / f"python{minor}")
    for lib in (src / "lib").glob("libpython*"):
        _copy_tree(lib, local / "lib" / lib.name)
    _copy_tree(
        src / "lib" / f"python{minor}", local / "lib" / f"python{minor}", exclude={"site-packages", "test"}
    )
    (local / "lib" / f"python{minor}" / "site-packages").mkdir()
    if (src / "include" / f"python{minor}").is_dir():
        _copy_tree(src / "include" / f"python{minor}", local / "include" / f"python{minor}")
    if (src / "lib" / "pkgconfig").is_dir():
        _copy_tree(src / "lib" / "pkgconfig", local / "lib" / "pkgconfig")


def _copy_tree(source: Path, dest: Path, exclude: set[str] | None = None, link: bool = False) -> None:
    """`cp -a` of `source` to `dest` (hard links with `link`), skipping relative paths in `exclude`."""
    exclude = exclude or set()
    if not exclude or source.is_symlink() or not source.is_dir():
        _cp(source, dest, link=link)
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copystat(source, dest)
    for entry in os.scandir(source):
        if entry.name in exclude:
            continue
        nested = {e[len(entry.name) + 1 :] for e in exclude if e.startswith(entry.name + "/")}
        _copy_tree(Path(entry.path), dest / entry.name, nested, link)


def _cp(source: Path, dest: Path, contents: bool = False, link: bool = False) -> None:
    """`cp -a` of `source`, or of its contents into `dest`; hard links only when asked (and on
    the same filesystem): the builder changes the owners of copies, never of linked files."""
    same_fs = os.stat(source, follow_symlinks=False).st_dev == os.stat(dest.parent).st_dev
    flags = ["-a", "--link"] if link and same_fs else ["-a"]
    result = subprocess.run(
        ["cp", *flags, "--", f"{source}/." if contents else str(source), str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildError(f"could not copy {source} into a base layer: {result.stderr.strip()}")
