"""Every form of fal `requirements` the guide names, built by kiln with real servers on loopback:
a wheel by URL and as `name @ URL`, a PEP 503 index (`--extra-index-url`) wanting basic-auth
credentials from a fal secret, a `--find-links=DIR` folder, and a git repository over HTTP that
wants a token from a fal secret. A @fal.function imports each package and says where it came
from; the secrets' values appear in no build log."""

from __future__ import annotations

import base64
import contextlib
import http.server
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from kiln.images.layer_store import LayerStore
from tests.conftest import KilnServer, run_modal
from tests.e2e.test_fal import FAL, fal_python

pytestmark = pytest.mark.e2e
INDEX_PASSWORD = "index-pass-7f3a9c"
GIT_TOKEN = "git-token-51bd02"


def wheel(directory: Path, name: str, version: str = "0.1") -> Path:
    """A pure-Python wheel whose module says its own name."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", f"ORIGIN = {name!r}\n")
        archive.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}/RECORD", "")
    return path


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; paths under /private/ want basic auth with `password`."""

    password = ""

    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            expected = base64.b64encode(f"x:{self.password}".encode()).decode()
            if self.headers.get("authorization") != f"Basic {expected}":
                self.send_response(401)
                self.send_header("www-authenticate", 'Basic realm="kiln"')
                self.end_headers()
                return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path, password: str) -> Iterator[int]:
    handler = type("H", (Handler,), {"password": password})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def git_repository(root: Path) -> None:
    """A bare repository served over git's dumb HTTP protocol: a package built with setuptools."""
    work = root / "work"
    (work / "kiln_from_git").mkdir(parents=True)
    (work / "kiln_from_git" / "__init__.py").write_text("ORIGIN = 'kiln_from_git'\n")
    (work / "setup.py").write_text(
        "from setuptools import setup\nsetup(name='kiln_from_git', version='0.3', packages=['kiln_from_git'])\n"
    )
    git = ["git", "-c", "user.name=kiln", "-c", "user.email=kiln@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "v0.3"], check=True)
    bare = root / "private" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)


SCRIPT = """
import fal

@fal.function(requirements={requirements!r})
def origins():
    import kiln_by_url, kiln_at_url, kiln_from_index, kiln_find_links, kiln_from_git
    return [m.ORIGIN for m in (kiln_by_url, kiln_at_url, kiln_from_index, kiln_find_links, kiln_from_git)]

print("origins", origins())
"""


def test_every_requirement_form_builds_with_secrets_kept_out_of_the_log(
    kiln: KilnServer, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    (files / "private" / "simple" / "kiln-from-index").mkdir(parents=True)
    (files / "wheels").mkdir()
    links = tmp_path / "links"
    links.mkdir()
    wheel(files / "wheels", "kiln_by_url")
    wheel(files / "wheels", "kiln_at_url")
    wheel(files / "private" / "simple" / "kiln-from-index", "kiln_from_index")
    wheel(links, "kiln_find_links")
    git_repository(files)
    for name, value in (("INDEX_PASSWORD", INDEX_PASSWORD), ("GIT_TOKEN", GIT_TOKEN)):
        subprocess.run([str(FAL), "secrets", "set", f"{name}={value}"], env=kiln.fal_env, check=True)
    script = tmp_path / "script.py"
    with serve(files, INDEX_PASSWORD) as index_port, serve(files, GIT_TOKEN) as git_port:
        base = f"http://127.0.0.1:{index_port}"
        requirements = [
            f"{base}/wheels/kiln_by_url-0.1-py3-none-any.whl",
            f"kiln_at_url @ {base}/wheels/kiln_at_url-0.1-py3-none-any.whl",
            "kiln_from_index==0.1",
            "--extra-index-url",
            f"http://x:${{INDEX_PASSWORD}}@127.0.0.1:{index_port}/private/simple",
            "kiln_find_links==0.1",
            f"--find-links={links}",
            f"kiln_from_git @ git+http://x:${{GIT_TOKEN}}@127.0.0.1:{git_port}/private/repo.git@main",
        ]
        script.write_text(SCRIPT.format(requirements=requirements))
        result = fal_python(kiln, str(script), cwd=tmp_path, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (
        "origins ['kiln_by_url', 'kiln_at_url', 'kiln_from_index', 'kiln_find_links', 'kiln_from_git']"
        in output
    )
    assert INDEX_PASSWORD not in output and GIT_TOKEN not in output
    assert INDEX_PASSWORD not in kiln.log() and GIT_TOKEN not in kiln.log()


SHARED_SCRIPT = """
import fal

@fal.function(requirements=["toml==0.10.2"])
def version():
    import toml
    return toml.__version__

print("fal sees toml", version())
"""


def test_a_requirement_set_shares_its_layer_with_a_modal_uv_pip_install_of_the_same_packages(
    kiln: KilnServer, tmp_path: Path
) -> None:
    modal = run_modal(kiln, "run", "shared_layers_app.py")
    assert "modal sees toml 0.10.2" in modal.stdout, modal.stdout + modal.stderr
    script = tmp_path / "script.py"
    script.write_text(SHARED_SCRIPT)
    result = fal_python(kiln, str(script), cwd=tmp_path)
    assert "fal sees toml 0.10.2" in result.stdout, result.stdout + result.stderr
    # One layer installs the package, whichever built it first and whatever was cached before.
    installs = [
        layer.step for layer in LayerStore(kiln.home / "layers").all() if "toml==0.10.2" in layer.step
    ]
    assert installs == [
        "RUN /.uv/uv pip install --python $(command -v python) --compile-bytecode toml==0.10.2"
    ]
