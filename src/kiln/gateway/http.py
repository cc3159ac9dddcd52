"""The HTTP side of the server (starlette): blobs, and a plain page per app."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from kiln.core.core import Core
from kiln.errors import KilnError


def create_app(core: Core) -> Starlette:
    async def put_blob(request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        try:
            etag = core.blobs.write_blob(blob_id, await request.body())
        except KilnError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    async def get_blob(request: Request) -> Response:
        try:
            data = core.blobs.read_blob(request.path_params["blob_id"])
        except KilnError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        return Response(data, media_type="application/octet-stream")

    async def app_page(request: Request) -> Response:
        app_id = request.path_params["app_id"]
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
        ]
    )
