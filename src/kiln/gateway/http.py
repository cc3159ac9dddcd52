"""The HTTP side of the server (starlette): blobs, volume blocks, and a plain page per app.

Every URL is one the server signed (`kiln.auth.SignedUrls`). Blob URLs come from BlobCreate and
BlobGet: an upload goes only to an ID the server issued, at most the size the client announced,
once; a download needs a URL the server made; both expire. App page URLs come from AppCreate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from kiln.core.core import Core
from kiln.errors import KilnError
from kiln.gateway import volume_blocks
from kiln.storage.blobs import BlobExists


def create_app(core: Core) -> Starlette:
    def allowed(request: Request, op: str) -> int:
        blob_id = request.path_params["blob_id"]
        core.blobs.blob_path(blob_id)  # a blob ID's shape, before anything else
        query = request.query_params
        return core.signed_urls.check(
            op, blob_id, query.get("size", ""), query.get("expires", ""), query.get("sig", "")
        )

    async def put_blob(request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        try:
            limit = allowed(request, "put")
        except KilnError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _too_large(limit)
        fd, tmp = core.blobs.staging_file()
        md5 = hashlib.md5()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return _too_large(limit)
                    md5.update(chunk)
                    f.write(chunk)
            etag = await asyncio.to_thread(core.blobs.commit_blob, blob_id, tmp, md5.hexdigest())
        except BlobExists as exc:
            return PlainTextResponse(str(exc), status_code=409)
        finally:
            tmp.unlink(missing_ok=True)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    async def get_blob(request: Request) -> Response:
        try:
            allowed(request, "get")
        except KilnError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        path = core.blobs.blob_path(request.path_params["blob_id"])
        if not path.exists():
            return PlainTextResponse("blob not found\n", status_code=404)
        return FileResponse(path, media_type="application/octet-stream")

    async def app_page(request: Request) -> Response:
        app_id = request.path_params["app_id"][:64]
        try:
            core.signed_urls.check_page(app_id, request.query_params.get("sig", ""))
        except KilnError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        try:
            app = core.app(app_id)
        except KilnError:
            return PlainTextResponse(f"app {app_id} not found\n", status_code=404)
        lines = [f"{app.app_id} {app.description!r} {app.state.name.lower()}"]
        lines += [f"  {tag}: {fid}" for tag, fid in sorted(app.function_ids.items())]
        return PlainTextResponse("\n".join(lines) + "\n")

    return Starlette(
        routes=[
            Route("/blobs/{blob_id}", put_blob, methods=["PUT"]),
            Route("/blobs/{blob_id}", get_blob, methods=["GET"]),
            Route("/apps/{app_id}", app_page, methods=["GET"]),
            *volume_blocks.routes(core),
        ]
    )


def _too_large(limit: int) -> Response:
    return PlainTextResponse(
        f"this upload is larger than the {limit} bytes its URL allows; ask the server for a new blob "
        "with the right content_length (the largest blob is KILN_MAX_BLOB_GB)",
        status_code=413,
    )
