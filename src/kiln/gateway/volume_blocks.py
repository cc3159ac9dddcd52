"""Volume blocks over HTTP: uploads of 8 MiB blocks and downloads of file ranges.

Every URL is one the server signed (`SignedUrls.request`) in answer to VolumePutFiles2 or
VolumeGetFile2. An upload goes to one (volume, sha256) and is kept only if its bytes hash to
that digest; its response body is what the client echoes as `put_response`. A download names a
file by its path and the identity it had when the URL was made (inode, mtime, size): a file
replaced or changed since answers 409 (read it again) rather than a mix of two versions. Bodies
stream: no block or file is held in memory whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kiln.core.core import Core
from kiln.errors import KilnError
from kiln.storage.volume_tree import BLOCK_SIZE, split_path

_CHUNK = 2**20  # bytes read per step of a download
_ABSORB = 2**20  # bytes of an upload hashed and written per step, off the event loop


def block_put_route(volume_id: str, sha256_hex: str) -> str:
    return f"/volumes/{volume_id}/blocks/{sha256_hex}"


def file_read_route(volume_id: str) -> str:
    return f"/volumes/{volume_id}/read"


def routes(core: Core) -> list[Route]:
    async def put_block(request: Request) -> Response:
        volume_id = request.path_params["volume_id"]
        digest_hex = request.path_params["sha256"]
        try:
            core.signed_urls.check_request(request.url.path, request.query_params.multi_items())
            digest = bytes.fromhex(digest_hex)
            fd, received = core.volumes.staging_file(volume_id)
        except (KilnError, ValueError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        hasher = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > BLOCK_SIZE:
                        return PlainTextResponse(
                            f"a volume block is at most {BLOCK_SIZE} bytes; upload files with the modal client\n",
                            status_code=413,
                        )
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _ABSORB:
                        # Hashing and writing release the GIL: off the loop, they overlap the next reads.
                        await asyncio.to_thread(_absorb, hasher, f, pending)
                        pending, pending_size = [], 0
                await asyncio.to_thread(_absorb, hasher, f, pending)
            if hasher.digest() != digest:
                return PlainTextResponse(
                    "the block's bytes do not hash to the sha256 in its URL (it changed while uploading): "
                    "upload the file again\n",
                    status_code=400,
                )
            await asyncio.to_thread(core.volumes.commit_block, volume_id, received, digest)
        except (KilnError, FileNotFoundError) as exc:  # the volume was deleted meanwhile
            return PlainTextResponse(f"{exc}\n", status_code=404)
        finally:
            received.unlink(missing_ok=True)
        return Response(digest_hex.encode(), status_code=200, media_type="text/plain")

    async def read_file(request: Request) -> Response:
        volume_id = request.path_params["volume_id"]
        try:
            params = core.signed_urls.check_request(request.url.path, request.query_params.multi_items())
            start, length = int(params["start"]), int(params["len"])
            parts = split_path(bytes.fromhex(params["path"]).decode())
        except (KilnError, KeyError, ValueError) as exc:
            return PlainTextResponse(f"{exc}\n", status_code=403)
        try:
            fd = await asyncio.to_thread(core.volumes.tree(volume_id).open_file, parts)
        except KilnError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        st = os.fstat(fd)
        identity = (str(st.st_ino), str(st.st_mtime_ns))
        if identity != (params["ino"], params["mtime"]) or st.st_size < start + length:
            os.close(fd)
            return PlainTextResponse(
                "the file changed since this download began; read it again\n", status_code=409
            )
        return StreamingResponse(
            _stream(fd, start, length),
            media_type="application/octet-stream",
            headers={"content-length": str(length)},
        )

    return [
        Route("/volumes/{volume_id}/blocks/{sha256}", put_block, methods=["PUT"]),
        Route("/volumes/{volume_id}/read", read_file, methods=["GET"]),
    ]


def _absorb(hasher: hashlib._Hash, f: BinaryIO, chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    hasher.update(data)
    f.write(data)


async def _stream(fd: int, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        position, end = start, start + length
        while position < end:
            data = await asyncio.to_thread(os.pread, fd, min(_CHUNK, end - position), position)
            if not data:
                return  # cut short: the client sees fewer bytes than content-length and retries
            position += len(data)
            yield data
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
