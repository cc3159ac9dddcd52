"""ImageGetOrCreate and ImageJoinStreaming: Modal image definitions → kiln build recipes."""

from __future__ import annotations

import hashlib
import logging
import platform
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.errors import ImageBuildError, KilnError
from kiln.frontends.modal.build_function import build_function_step
from kiln.frontends.modal.client_deps import IMAGE_BUILDER_VERSION
from kiln.frontends.modal.dispatch import CallContext, long_poll
from kiln.frontends.modal.launcher import ModalLauncher
from kiln.ids import new_id
from kiln.images.context import BuildContext
from kiln.images.planner import Recipe
from kiln.images.registry import RegistryAuth
from kiln.images.service import ImageBuild

log = logging.getLogger("kiln.images")

_SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
_STATIC_CREDS = api_pb2.REGISTRY_AUTH_TYPE_STATIC_CREDS


class ImageHandlers:
    def __init__(self, core: Core, launcher: ModalLauncher) -> None:
        self.core = core
        self.launcher = launcher  # runs `run_function` build steps

    def recipe(self, req: api_pb2.ImageGetOrCreateRequest) -> Recipe:
        image = req.image
        _refuse_unsupported(image)
        context = BuildContext()
        blobs = self.core.blobs
        for f in image.context_files:
            digest = blobs.put_file(f.data)
            rel = f.filename.lstrip("/")
            context.files[rel] = blobs.file_path(digest)
            context.digests[rel] = digest
        if image.context_mount_id:
            for mf in self.core.mounts.files(image.context_mount_id):
                rel = mf.path.lstrip("/")
                context.files[rel] = blobs.file_path(mf.sha256)
                context.digests[rel] = mf.sha256
        parent_key = None
        for base in image.base_images:
            parent_key = self.core.images.top_key(base.image_id)
        secrets = self.core.secrets.env_of(list(image.secret_ids))
        return Recipe(
            dockerfile=list(image.dockerfile_commands),
            parent_key=parent_key,
            context=context,
            secret_env=secrets,
            # Keyed by content: `env={...}` makes a new anonymous secret on every run.
            secret_digest=_digest(sorted(secrets.items())) if secrets else "",
            build_args=dict(image.build_args),
            registry_auth=self._registry_auth(image.image_registry_config),
            build_function=build_function_step(self.core, self.launcher, req)
            if req.build_function_id
            else None,
            force_build=req.force_build,
            ignore_cache_nonce=uuid.uuid4().hex if req.ignore_cache else "",
        )

    def _registry_auth(self, config: api_pb2.ImageRegistryConfig) -> RegistryAuth | None:
        if not config.secret_id:
            return None
        if config.registry_auth_type not in (_STATIC_CREDS, api_pb2.REGISTRY_AUTH_TYPE_UNSPECIFIED):
            name = api_pb2.RegistryAuthType.Name(config.registry_auth_type)
            raise ImageBuildError(
                f"Registry authentication {name} (AWS ECR / GCP Artifact Registry) is not supported by kiln; "
                "use a secret with REGISTRY_USERNAME and REGISTRY_PASSWORD."
            )
        env = self.core.secrets.env_of([config.secret_id])
        if "REGISTRY_USERNAME" not in env or "REGISTRY_PASSWORD" not in env:
            raise ImageBuildError(
                "The registry secret needs the keys REGISTRY_USERNAME and REGISTRY_PASSWORD."
            )
        return RegistryAuth(env["REGISTRY_USERNAME"], env["REGISTRY_PASSWORD"])

    async def ImageGetOrCreate(
        self, req: api_pb2.ImageGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.ImageGetOrCreateResponse:
        started = time.perf_counter()
        try:
            build = self.core.images.request(self.recipe(req))
        except KilnError as exc:
            # Reported as a failed build: the client shows it as an ImageBuildError with this text.
            return api_pb2.ImageGetOrCreateResponse(
                image_id=new_id("im"), result=api_pb2.GenericResult(status=_FAILURE, exception=str(exc))
            )
        response = api_pb2.ImageGetOrCreateResponse(image_id=build.image_id)
        if build.done.is_set():
            response.result.CopyFrom(self._result(build))
            response.metadata.CopyFrom(self._metadata(build))
        elapsed_ms = (time.perf_counter() - started) * 1000
        outcome = "ready" if build.done.is_set() else "building"
        log.info("ImageGetOrCreate %s: %s, answered in %.1f ms", build.image_id, outcome, elapsed_ms)
        return response

    async def ImageJoinStreaming(
        self, req: api_pb2.ImageJoinStreamingRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.ImageJoinStreamingResponse]:
        build = self.core.images.get(req.image_id)
        cursor, deadline = long_poll(req.last_entry_id, req.timeout)
        while True:
            entries = await build.logs.read(cursor, max(0.0, deadline - time.monotonic()))
            if entries:
                cursor = entries[-1].entry_id
                yield api_pb2.ImageJoinStreamingResponse(
                    task_logs=[
                        api_pb2.TaskLogs(data=e.data, file_descriptor=cast(Any, e.fd), timestamp=e.timestamp)
                        for e in entries
                    ],
                    entry_id=str(cursor),
                )
                continue
            if build.done.is_set():
                yield api_pb2.ImageJoinStreamingResponse(
                    result=self._result(build), metadata=self._metadata(build), entry_id=str(cursor), eof=True
                )
                return
            if time.monotonic() >= deadline:
                return

    def _result(self, build: ImageBuild) -> api_pb2.GenericResult:
        if build.error:
            return api_pb2.GenericResult(status=_FAILURE, exception=build.error)
        return api_pb2.GenericResult(status=_SUCCESS)

    def _metadata(self, build: ImageBuild) -> api_pb2.ImageMetadata:
        if build.error:
            return api_pb2.ImageMetadata()
        config = self.core.images.config(build.image_id)
        return api_pb2.ImageMetadata(
            python_version_info=config.python_version_info,
            image_builder_version=IMAGE_BUILDER_VERSION,
            workdir=config.workdir or "/",
        )


def _refuse_unsupported(image: api_pb2.Image) -> None:
    """Parts of an image definition kiln cannot honour: say so rather than ignore them."""
    if image.gpu_config.type or image.gpu_config.gpu_type or image.gpu_config.count:
        raise ImageBuildError(
            "GPU build steps (`gpu=` on an image method) are not supported by kiln; remove `gpu=`."
        )
    if image.volume_mounts:
        raise ImageBuildError(
            "Volumes during image builds (`volumes=` on run_commands) are not supported by kiln."
        )
    wanted = {api_pb2.ARCH_X86_64: "x86_64", api_pb2.ARCH_AARCH64: "aarch64"}.get(image.arch)
    if wanted and wanted != platform.machine():
        raise ImageBuildError(
            f"kiln builds images for this machine ({platform.machine()}), not for {wanted}."
        )


def _digest(items: object) -> str:
    return hashlib.sha256(repr(items).encode()).hexdigest()
