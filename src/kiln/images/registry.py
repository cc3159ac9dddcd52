"""Pulling images from a registry over the OCI distribution API (`/v2/…`), with no engine.

`FROM <image>` that no offline provider knows is pulled: the manifest (an index picks this
machine's platform), the config (env, workdir, cmd, …) and the layer blobs, each checked against
its digest, then applied in order into one kiln layer. Credentials come from the image's
registry secret (REGISTRY_USERNAME / REGISTRY_PASSWORD); registries answer 401 with the way to
authenticate (Basic, or a Bearer token from an auth service), as the distribution spec says.
Registries on loopback, and those named in KILN_INSECURE_REGISTRIES, are spoken to over plain
HTTP, as Docker does for localhost. The image's tag, not its digest, is its layer key: a later
push to the same tag is fetched with `force_build=True`, as a container engine's cache does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import ImageBuildError
from kiln.images.base_image import BaseImage, BaseLayer
from kiln.images.layer_tar import apply_layer
from kiln.images.pythons import python_version_in
from kiln.images.steps import ImageConfig

_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_TIMEOUT = 30.0
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class RegistryAuth:
    username: str
    password: str


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]; Docker Hub is "docker.io"
    repository: str
    tag: str  # a tag, or a digest ("sha256:…")

    @property
    def canonical(self) -> str:
        separator = "@" if self.tag.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{separator}{self.tag}"

    @property
    def base_url(self) -> str:
        host = "registry-1.docker.io" if self.registry == "docker.io" else self.registry
        insecure = {h for h in os.environ.get("KILN_INSECURE_REGISTRIES", "").split(",") if h}
        plain = host.rsplit(":", 1)[0] in _LOOPBACK or host in insecure
        return f"{'http' if plain else 'https'}://{host}"


def parse_reference(reference: str) -> Reference:
    """`python:3.11` → docker.io/library/python:3.11; `host:5000/a/b@sha256:…` as written."""
    name, _, digest = reference.partition("@")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    path, _, tag = path.partition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if registry == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", path):
        raise ImageBuildError(f"{reference!r} is not a valid image reference")
    return Reference(registry, path, digest or tag or "latest")


def registry_image(
    reference: str, auth: RegistryAuth | None, network_env: dict[str, str], offline_hint: str
) -> BaseImage:
    """A base image pulled from its registry when built."""
    ref = parse_reference(reference)

    def pull(dest: Path) -> ImageConfig:
        return RegistryClient(ref, auth, offline_hint).pull(dest)

    return BaseImage(
        reference,
        [BaseLayer(f"registry:{ref.canonical}", materialize=pull, refresh=True)],
        ImageConfig(),
        notice=f"Pulling {ref.canonical} from {ref.base_url}.",
    )


class RegistryClient:
    def __init__(self, ref: Reference, auth: RegistryAuth | None, offline_hint: str = "") -> None:
        self.ref = ref
        self.auth = auth
        self.offline_hint = offline_hint
        self._authorization = ""

    def pull(self, dest: Path) -> ImageConfig:
        """Unpack the image's layers into `dest` and return its config."""
        manifest = self._manifest(self.ref.tag)
        config_blob = json.loads(self._get(f"blobs/{manifest['config']['digest']}").read())
        for layer in manifest.get("layers", []):
            media_type = layer.get("mediaType", "")
            if "zstd" in media_type:
                raise ImageBuildError(
                    f"{self.ref.canonical}: zstd-compressed layers are not supported by kiln"
                )
            with tempfile.NamedTemporaryFile(dir=dest.parent, suffix=".layer") as archive:
                self._download(layer["digest"], Path(archive.name))
                apply_layer(Path(archive.name), dest)
        return _config(config_blob.get("config") or {}, dest)

    def _manifest(self, tag: str) -> dict[str, Any]:
        response = self._get(f"manifests/{tag}", accept=(*_INDEX_TYPES, *_MANIFEST_TYPES))
        manifest: dict[str, Any] = json.loads(response.read())
        media_type = manifest.get("mediaType") or response.headers.get("Content-Type", "")
        if media_type in _INDEX_TYPES or "manifests" in manifest:
            wanted = _platform()
            for entry in manifest.get("manifests", []):
                found = entry.get("platform", {})
                if (found.get("os"), found.get("architecture")) == wanted:
                    return self._manifest(entry["digest"])
            raise ImageBuildError(
                f"{self.ref.canonical} has no image for {wanted[0]}/{wanted[1]}, the platform of this machine"
            )
        if "layers" not in manifest or "config" not in manifest:
            raise ImageBuildError(f"{self.ref.canonical}: unsupported manifest format {media_type or '?'}")
        return manifest

    def _download(self, digest: str, path: Path) -> None:
        algorithm, _, expected = digest.partition(":")
        h = hashlib.new(algorithm)
        with self._get(f"blobs/{digest}") as response, open(path, "wb") as out:
            while chunk := response.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != expected:
            raise ImageBuildError(f"{self.ref.canonical}: layer {digest} arrived corrupted (digest mismatch)")

    def _get(self, path: str, accept: tuple[str, ...] = ()) -> Any:
        url = f"{self.ref.base_url}/v2/{self.ref.repository}/{path}"
        for attempt in range(2):
            request = urllib.request.Request(url, headers={"Accept": ", ".join(accept)} if accept else {})
            if self._authorization:
                request.add_header("Authorization", self._authorization)
            try:
                return urllib.request.urlopen(request, timeout=_TIMEOUT)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0:
                    self._authorization = self._authenticate(exc.headers.get("WWW-Authenticate", ""))
                    continue
                raise self._http_error(exc) from exc
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ImageBuildError(
                    f"Could not reach the registry {self.ref.base_url} to pull {self.ref.canonical}: {reason}. "
                    f"{self.offline_hint}"
                ) from exc
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str) -> str:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        basic = ""
        if self.auth is not None:
            basic = (
                "Basic " + base64.b64encode(f"{self.auth.username}:{self.auth.password}".encode()).decode()
            )
        if scheme.lower() == "basic":
            if not basic:
                raise self._denied()
            return basic
        if scheme.lower() != "bearer" or "realm" not in params:
            raise ImageBuildError(f"{self.ref.base_url} asks for unsupported authentication: {challenge!r}")
        query = {"service": params.get("service", ""), "scope": f"repository:{self.ref.repository}:pull"}
        request = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if basic:
            request.add_header("Authorization", basic)
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                token = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise self._denied() from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ImageBuildError(
                f"Could not reach the registry's auth service {params['realm']}: {exc}"
            ) from exc
        return f"Bearer {token.get('token') or token.get('access_token', '')}"

    def _http_error(self, exc: urllib.error.HTTPError) -> ImageBuildError:
        if exc.code in (401, 403):
            return self._denied()
        if exc.code == 404:
            return ImageBuildError(
                f"{self.ref.canonical} was not found in its registry ({exc.url}): check the name and tag"
            )
        return ImageBuildError(f"the registry answered {exc.code} {exc.reason} for {exc.url}")

    def _denied(self) -> ImageBuildError:
        how = (
            "the credentials in the image's registry secret were refused"
            if self.auth
            else "it needs credentials: give the image a secret with the keys REGISTRY_USERNAME and "
            "REGISTRY_PASSWORD (a named secret, or one made from a dict)"
        )
        return ImageBuildError(f"The registry refused to serve {self.ref.canonical}: {how}.")


def _platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _config(config: dict[str, Any], root: Path) -> ImageConfig:
    env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
    return ImageConfig(
        env=env,
        workdir=config.get("WorkingDir") or "",
        cmd=list(config.get("Cmd") or []),
        entrypoint=list(config.get("Entrypoint") or []),
        shell=list(config.get("Shell") or ["/bin/sh", "-c"]),
        user=config.get("User") or "",
        python_version_info=python_version_in(root, env),
    )
