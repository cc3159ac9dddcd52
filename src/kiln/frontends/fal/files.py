"""fal's REST host, for `app_files`: the client uploads each file its app names once, keyed by
fal's hash (sha256 of the bytes, then the decimal `st_mode`), in 10 MiB multipart parts:

    POST /files/missing_hashes {"hashes": [...]}                     → the hashes kiln lacks
    POST /files/app/multipart/<hash>/initiate {size, mtime, mode}    → {"upload_id"} (409: have it)
    PUT  /files/app/multipart/<hash>/<upload_id>/<part> (form field file_upload) → {part_number, etag}
    POST /files/app/multipart/<hash>/<upload_id>/complete {"parts"}  → {"etag"}
    POST /files/app/multipart/<hash>/<upload_id>/cancel

A completed upload is checked against its hash before it is kept (`KILN_HOME/fal-files`, one file
per hash, written once), so a runner gets exactly the bytes and mode the client hashed. Runners see
the files their app names under `/app/<relative path>`, as fal lays them out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kiln.frontends.fal.keys import FalAuth
from kiln.ids import new_id

_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_PART = 16 * 2**20  # bytes of one part (fal's client sends 10 MiB)
MAX_FILE = 5 * 2**30  # bytes of one file
_MODE_BITS = 0o777  # what of a file's mode a runner's copy keeps (no setuid/setgid/sticky)


class FileStore:
    """Uploaded app files, by fal's hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.uploads = root / "uploads"
        self.files.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)

    def has(self, file_hash: str) -> bool:
        return bool(_HASH.match(file_hash)) and (self.files / file_hash).exists()

    def path(self, file_hash: str) -> Path:
        if not self.has(file_hash):
            raise FileNotFoundError(f"app file {file_hash} was never uploaded; run fal again to upload it")
        return self.files / file_hash

    def mode(self, file_hash: str) -> int:
        return int(json.loads((self.files / f"{file_hash}.json").read_text())["mode"]) & _MODE_BITS

    def materialize(self, files: list[tuple[str, str]], target: Path) -> None:
        """Lay out `(hash, relative path)` pairs under `target` (checked: no escaping it)."""
        for file_hash, relative in files:
            parts = Path(relative).parts
            if not relative or Path(relative).is_absolute() or ".." in parts:
                raise ValueError(f"app file path {relative!r} leaves the app's folder")
            destination = target.joinpath(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.path(file_hash), destination)
            os.chmod(destination, self.mode(file_hash))


class FalFiles:
    """The ASGI app of the REST host."""

    def __init__(self, store: FileStore, auth: FalAuth) -> None:
        self.store = store
        self.auth = auth
        prefix = "/files/app/multipart/{file_hash}"
        self.app = Starlette(
            routes=[
                Route("/files/missing_hashes", self.missing, methods=["POST"]),
                Route(f"{prefix}/initiate", self.initiate, methods=["POST"]),
                Route(f"{prefix}/{{upload_id}}/complete", self.complete, methods=["POST"]),
                Route(f"{prefix}/{{upload_id}}/cancel", self.cancel, methods=["POST"]),
                Route(f"{prefix}/{{upload_id}}/{{part:int}}", self.part, methods=["PUT"]),
            ]
        )

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http" and not self.auth.accepts_header(scope):
            response = JSONResponse(
                {"detail": "Send `Authorization: Key <FAL_KEY>` (kiln's token pair)"}, 401
            )
            await response(scope, receive, send)  # type: ignore[arg-type]
            return
        await self.app(scope, receive, send)  # type: ignore[arg-type]

    async def missing(self, request: Request) -> Response:
        hashes = (await request.json()).get("hashes", [])
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            return JSONResponse({"detail": "hashes must be a list of strings"}, 422)
        return JSONResponse([h for h in hashes if not self.store.has(h)])

    async def initiate(self, request: Request) -> Response:
        file_hash = self._hash(request)
        if self.store.has(file_hash):
            return JSONResponse({"detail": "already uploaded"}, 409)
        metadata = await request.json()
        try:
            size, mode = int(metadata.get("size", 0)), int(metadata["mode"])
        except (KeyError, TypeError, ValueError):
            return JSONResponse({"detail": "initiate needs the file's size and mode"}, 422)
        if size > MAX_FILE:
            return JSONResponse({"detail": f"app files are limited to {MAX_FILE} bytes"}, 413)
        upload_id = new_id("up")
        directory = self.store.uploads / upload_id
        directory.mkdir()
        (directory / "meta.json").write_text(json.dumps({"hash": file_hash, "mode": mode, "size": size}))
        return JSONResponse({"upload_id": upload_id})

    async def part(self, request: Request) -> Response:
        directory = self._upload(request)
        number = int(request.path_params["part"])
        if not 1 <= number <= 10_000:
            return JSONResponse({"detail": "part numbers run from 1 to 10000"}, 422)
        form = await request.form(max_files=1, max_fields=0, max_part_size=MAX_PART)
        upload = form.get("file_upload")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"detail": "send the part as the form field file_upload"}, 422)
        digest = hashlib.md5(usedforsecurity=False)
        written = 0
        with open(directory / f"{number:05d}.part", "wb") as out:
            while chunk := await upload.read(2**20):
                written += len(chunk)
                if written > MAX_PART:
                    return JSONResponse({"detail": f"a part is limited to {MAX_PART} bytes"}, 413)
                digest.update(chunk)
                out.write(chunk)
        return JSONResponse({"part_number": number, "etag": digest.hexdigest()})

    async def complete(self, request: Request) -> Response:
        directory = self._upload(request)
        meta = json.loads((directory / "meta.json").read_text())
        body = await request.json()
        numbers = sorted(int(p["part_number"]) for p in body.get("parts", []))
        parts = [directory / f"{n:05d}.part" for n in numbers]
        if not all(p.exists() for p in parts):
            return JSONResponse({"detail": "a part named in complete was never uploaded"}, 422)
        digest = hashlib.sha256()
        staging = directory / "file"
        with open(staging, "wb") as out:
            for path in parts:
                with open(path, "rb") as f:
                    while chunk := f.read(2**20):
                        digest.update(chunk)
                        out.write(chunk)
        digest.update(str(meta["mode"]).encode())
        if digest.hexdigest() != meta["hash"]:
            shutil.rmtree(directory, ignore_errors=True)
            return JSONResponse(
                {"detail": "the uploaded bytes do not match the file's hash; upload it again"}, 422
            )
        target = self.store.files / meta["hash"]
        (self.store.files / f"{meta['hash']}.json").write_text(
            json.dumps({"mode": stat.S_IMODE(meta["mode"])})
        )
        os.replace(staging, target)
        shutil.rmtree(directory, ignore_errors=True)
        return JSONResponse({"etag": meta["hash"]})

    async def cancel(self, request: Request) -> Response:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._upload(request))
        return JSONResponse({})

    def _hash(self, request: Request) -> str:
        file_hash = str(request.path_params["file_hash"])
        if not _HASH.match(file_hash):
            raise _bad("not a file hash")
        return file_hash

    def _upload(self, request: Request) -> Path:
        upload_id = str(request.path_params["upload_id"])
        directory = self.store.uploads / upload_id
        if not re.match(r"^up-\w+$", upload_id) or not directory.is_dir():
            raise _bad("no such upload; initiate it first")
        meta = json.loads((directory / "meta.json").read_text())
        if meta["hash"] != self._hash(request):
            raise _bad("this upload is for another file")
        return directory


def _bad(detail: str) -> Exception:
    from starlette.exceptions import HTTPException

    return HTTPException(404, detail)
