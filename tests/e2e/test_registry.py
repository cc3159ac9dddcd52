"""`Image.from_registry` over the OCI distribution API, against a registry on loopback (Debian's
`docker-registry`) holding an image this test pushes over the same API."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = [
    pytest.mark.e2e,
    # Skipped on a developer machine without the registry; in CI (which installs it) it must run.
    pytest.mark.skipif(
        shutil.which("docker-registry") is None and not os.environ.get("CI"),
        reason="needs `apt-get install docker-registry` (scripts/install --test installs it)",
    ),
]

USER, PASSWORD = "kiln", "registry-password"


@dataclass
class Registry:
    address: str
    auth: bool

    def push(self, repository: str, tag: str, layers: list[bytes], config: dict[str, object]) -> str:
        """Push an image (gzipped layer tars and a config); returns its reference."""
        descriptors = [
            self._blob(repository, layer, "application/vnd.docker.image.rootfs.diff.tar.gzip")
            for layer in layers
        ]
        diff_ids = [f"sha256:{hashlib.sha256(gzip.decompress(layer)).hexdigest()}" for layer in layers]
        config_blob = json.dumps(
            {
                **config,
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": self._blob(repository, config_blob, "application/vnd.docker.container.image.v1+json"),
            "layers": descriptors,
        }
        self._request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            json.dumps(manifest).encode(),
            {"Content-Type": str(manifest["mediaType"])},
        )
        return f"{self.address}/{repository}:{tag}"

    def _blob(self, repository: str, data: bytes, media_type: str) -> dict[str, object]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        location = self._request("POST", f"/v2/{repository}/blobs/uploads/").headers["Location"]
        separator = "&" if "?" in location else "?"
        self._request(
            "PUT", f"{location}{separator}digest={digest}", data, {"Content-Type": "application/octet-stream"}
        )
        return {"mediaType": media_type, "size": len(data), "digest": digest}

    def _request(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ):
        url = path if path.startswith("http") else f"http://{self.address}{path}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if self.auth:
            request.add_header(
                "Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            )
        return urllib.request.urlopen(request, timeout=30)


def layer(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_registry(tmp_path: Path, auth: bool) -> Iterator[Registry]:
    root = tmp_path / f"registry-{'auth' if auth else 'open'}"
    root.mkdir()
    address = f"127.0.0.1:{free_port()}"
    config = f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\nhttp:\n  addr: {address}\n"
    if auth:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import crypt  # bcrypt, which the registry requires (libxcrypt provides it)

        (root / "htpasswd").write_text(
            f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
        )
        config += f"auth:\n  htpasswd:\n    realm: kiln-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(config)
    log = open(root / "registry.log", "w")
    process = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log)
    registry = Registry(address, auth)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                registry._request("GET", "/v2/")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and process.poll() is None, (
                    root / "registry.log"
                ).read_text()
                time.sleep(0.1)
        yield registry
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[Registry]:
    yield from start_registry(tmp_path, auth=True)


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Registry]:
    yield from start_registry(tmp_path, auth=False)


def push_test_image(registry: Registry) -> str:
    return registry.push(
        f"kiln/test-{uuid.uuid4().hex[:8]}",
        "v1",
        [
            layer({"hello.txt": "hello from a registry\n", "etc/old.conf": "replaced later"}),
            layer({"etc/.wh.old.conf": "", "etc/new.conf": "new"}),
        ],
        {
            "config": {
                "Env": ["KILN_FROM_REGISTRY=yes", "PATH=/bin"],
                "WorkingDir": "/work",
                "Cmd": ["/bin/true"],
            }
        },
    )


def registry_layers(home: Path, ref: str) -> list[Path]:
    return [
        p.parent
        for p in (home / "layers").glob("*/layer.json")
        if json.loads(p.read_text())["step"] == f"base: registry:{ref}"
    ]


def run_app(kiln: KilnServer, ref: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_modal(kiln, "run", "registry_app.py", *args, env={"KILN_REGISTRY_REF": ref, **env})


def test_pull_with_credentials_from_a_secret(kiln: KilnServer, private_registry: Registry) -> None:
    ref = push_test_image(private_registry)
    result = run_app(kiln, ref, KILN_REGISTRY_USER=USER, KILN_REGISTRY_PASSWORD=PASSWORD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Pulling {ref}" in result.stdout + result.stderr
    (pulled,) = registry_layers(kiln.home, ref)
    files = {str(p.relative_to(pulled / "fs")) for p in (pulled / "fs").rglob("*") if p.is_file()}
    assert files == {"hello.txt", "etc/new.conf"}  # the second layer's whiteout removed etc/old.conf
    config = json.loads((pulled / "layer.json").read_text())["config"]
    assert config["env"]["KILN_FROM_REGISTRY"] == "yes" and config["workdir"] == "/work"
    assert PASSWORD not in (result.stdout + result.stderr + kiln.log())


def test_pull_without_or_with_wrong_credentials_says_so(kiln: KilnServer, private_registry: Registry) -> None:
    ref = push_test_image(private_registry)
    missing = run_app(kiln, ref)
    assert missing.returncode != 0
    assert "needs credentials" in missing.stdout + missing.stderr
    wrong = run_app(kiln, ref, KILN_REGISTRY_USER=USER, KILN_REGISTRY_PASSWORD="wrong")
    assert wrong.returncode != 0
    assert "credentials in the image's registry secret were refused" in wrong.stdout + wrong.stderr
    assert not registry_layers(kiln.home, ref)


def test_copy_from_a_registry_image_into_a_python_image(kiln: KilnServer, open_registry: Registry) -> None:
    ref = push_test_image(open_registry)
    result = run_app(kiln, ref, "--call", KILN_REGISTRY_CASE="copy-from")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from-registry: hello from a registry" in result.stdout
