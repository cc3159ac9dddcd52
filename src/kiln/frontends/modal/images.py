"""ImageGetOrCreate and ImageJoinStreaming: Modal image definitions → kiln build recipes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.errors import KilnError
from kiln.frontends.modal.dispatch import CallContext
from kiln.frontends.modal.objects import secret_env
from kiln.ids import new_id
from kiln.images.builder import BuildContext, Recipe
from kiln.images.service import ImageBuild

_SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE


class ImageHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    def recipe(self, req: api_pb2.ImageGetOrCreateRequest) -> Recipe:
        image = req.image
        if req.build_function_id or image.HasField("build_function"):
            raise KilnError(
                "Image.run_function is not supported by kiln yet; use run_commands or a Dockerfile step instead."
            )
        if image.image_registry_config.registry_auth_type:
            raise KilnError(
                "Private registry images are not supported by kiln yet (no registry is configured)."
            )
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
        return Recipe(
            dockerfile=list(image.dockerfile_commands),
            parent_key=parent_key,
            context=context,
            secret_env=secret_env(self.core, list(image.secret_ids)),
            secret_ids=list(image.secret_ids),
            force_build=req.force_build,
            ignore_cache_nonce=uuid.uuid4().hex if req.ignore_cache else "",
        )

    async def ImageGetOrCreate(
        self, req: api_pb2.ImageGetOrCreateRequest, ctx: CallContext
    ) -> api_pb2.ImageGetOrCreateResponse:
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
        return response

    async def ImageJoinStreaming(
        self, req: api_pb2.ImageJoinStreamingRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.ImageJoinStreamingResponse]:
        build = self.core.images.get(req.image_id)
        cursor = int(req.last_entry_id) if req.last_entry_id.isdigit() else 0
        deadline = time.monotonic() + min(req.timeout or 55.0, 55.0)
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
        _, config = self.core.images.layers(build.image_id)
        return api_pb2.ImageMetadata(
            python_version_info=config.python_version_info,
            image_builder_version=self.core.config.image_builder_version,
            workdir=config.workdir or "/",
        )
