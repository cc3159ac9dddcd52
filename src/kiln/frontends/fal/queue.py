"""fal's queue API on the queue host: submit a request, poll its status, fetch its result, cancel.

    POST /<owner>/<app>/<path>                  → {request_id, response_url, status_url, cancel_url}
    GET  /<owner>/<app>/requests/<id>/status    → 202 IN_QUEUE (with queue_position) | 202
                                                  IN_PROGRESS | 200 COMPLETED (always with "logs")
    GET  /<owner>/<app>/requests/<id>/status/stream  the same, as server-sent events, until done
    GET  /<owner>/<app>/requests/<id>           → the runner's status code, headers and body
    PUT  /<owner>/<app>/requests/<id>/cancel    → 202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED

A submitted request waits for a runner with room like a synchronous one (runners start on
demand and scale), then its response is kept for the caller. Requests live in this server's
memory: a restart forgets those not yet fetched (a known limit, written down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kiln.core.core import Core
from kiln.errors import KilnError
from kiln.frontends.fal.keys import FalAuth
from kiln.frontends.fal.routes import FalHost, FalRoutes, Refusal, Route
from kiln.gateway.proxy import Upstream, quick_ack
from kiln.gateway.types import Receive, Scope, Send
from kiln.ids import new_id

MAX_BODY = 64 * 2**20  # bytes of a queued request's body
KEEP = 3600.0  # seconds a finished request's result is kept
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class QueuedRequest:
    request_id: str
    route: Route
    app_path: str  # "<owner>/<app>"
    path: str  # what the runner sees
    method: str
    headers: list[tuple[str, str]]
    body: bytes
    submitted: float = field(default_factory=time.monotonic)
    status: str = "IN_QUEUE"
    response_status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    error: str = ""
    work: asyncio.Task[None] | None = None
    finished_at: float = 0.0


class FalQueue(FalHost):
    """The ASGI app of the queue host."""

    def __init__(self, core: Core, routes: FalRoutes, upstream: Upstream, auth: FalAuth) -> None:
        super().__init__(core, routes, upstream, auth)
        self.requests: dict[str, QueuedRequest] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._expire()
        admitted = self.admit(scope)
        if isinstance(admitted, Refusal):
            await _json(send, admitted.status, {"detail": admitted.reason})
            return
        route, rest = admitted
        app_path = scope["path"].lstrip("/").split("/", 2)[:2]
        base = f"{self.routes.queue_url}/{'/'.join(app_path)}"
        parts = rest.strip("/").split("/")
        if parts[0] == "requests" and len(parts) >= 2:
            await self._about(scope, send, parts[1], parts[2:], base)
        elif scope["method"] == "POST":
            await self._submit(scope, receive, send, route, "/".join(app_path), rest, base)
        else:
            await _json(send, 405, {"detail": "Submit with POST; read requests at …/requests/<id>"})

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, route: Route, app_path: str, path: str, base: str
    ) -> None:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _json(send, 413, {"detail": f"The request body is over {MAX_BODY} bytes"})
                return
            if not message.get("more_body"):
                break
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in scope.get("headers", [])
            if bytes(k).lower() not in (b"host", b"authorization", b"content-length", b"connection")
        ]
        request = QueuedRequest(new_id("rq"), route, app_path, path, "POST", headers, bytes(body))
        headers.append(("x-fal-request-id", request.request_id))
        self.requests[request.request_id] = request
        request.work = asyncio.ensure_future(self._run(request))
        await _json(
            send,
            200,
            {**self._urls(request, base), "status": "IN_QUEUE", "queue_position": self._position(request)},
        )

    async def _run(self, request: QueuedRequest) -> None:
        try:
            server = self.core.server(request.route.function_id)
            async with server.request(queue_when_full=True, wait=server.function.startup_timeout) as task:
                assert task.http_address is not None
                request.status = "IN_PROGRESS"
                host, port = task.http_address
                async with self.upstream.session().request(
                    request.method,
                    f"http://{host}:{port}{request.path}",
                    headers=request.headers,
                    data=request.body,
                    allow_redirects=False,
                ) as response:
                    quick_ack(response)
                    request.response_body = await response.read()
                    request.response_status = response.status
                    request.response_headers = [
                        (k, v) for k, v in response.headers.items() if k.lower() not in _HOP
                    ]
        except (KilnError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            request.error = str(exc) or type(exc).__name__
            request.response_status = 503 if isinstance(exc, KilnError) else 502
            request.response_body = json.dumps({"detail": request.error}).encode()
            request.response_headers = [("content-type", "application/json")]
        except asyncio.CancelledError:
            request.error = "The request was cancelled."
            request.response_status = 499
            request.response_body = json.dumps({"detail": request.error}).encode()
            request.response_headers = [("content-type", "application/json")]
        finally:
            request.status = "COMPLETED"
            request.finished_at = time.monotonic()

    async def _about(self, scope: Scope, send: Send, request_id: str, what: list[str], base: str) -> None:
        request = self.requests.get(request_id)
        if request is None:
            await _json(
                send, 404, {"detail": f"Request {request_id} not found (results are kept {KEEP:g} s)"}
            )
            return
        if what == ["status"] and scope["method"] == "GET":
            document = self._status(request, base)
            await _json(send, 200 if request.status == "COMPLETED" else 202, document)
        elif what == ["status", "stream"] and scope["method"] == "GET":
            await self._stream_status(send, request, base)
        elif what == ["cancel"] and scope["method"] == "PUT":
            if request.status == "COMPLETED":
                await _json(send, 400, {"status": "ALREADY_COMPLETED"})
                return
            if request.work is not None:
                request.work.cancel()
            await _json(send, 202, {"status": "CANCELLATION_REQUESTED"})
        elif not what and scope["method"] == "GET":
            if request.status != "COMPLETED":
                await _json(send, 400, {"detail": "Request is still in progress", "status": request.status})
                return
            headers = [(k.encode(), v.encode()) for k, v in request.response_headers]
            headers += [(b"content-length", str(len(request.response_body)).encode()),
                        (b"x-fal-request-id", request.request_id.encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": request.response_status, "headers": headers})
            await send({"type": "http.response.body", "body": request.response_body})
        else:
            await _json(
                send, 405, {"detail": "Use GET …/status, GET …/status/stream, GET …, or PUT …/cancel"}
            )

    async def _stream_status(self, send: Send, request: QueuedRequest, base: str) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = ""
        while True:
            document = json.dumps(self._status(request, base))
            if document != last:
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"data: {document}\n\n".encode(),
                        "more_body": True,
                    }
                )
                last = document
            if request.status == "COMPLETED":
                break
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})

    def _status(self, request: QueuedRequest, base: str) -> dict[str, Any]:
        document: dict[str, Any] = {"status": request.status, "request_id": request.request_id, "logs": []}
        document.update(self._urls(request, base))
        if request.status == "IN_QUEUE":
            document["queue_position"] = self._position(request)
        if request.status == "COMPLETED" and request.error:
            document["error"] = request.error
        return document

    def _urls(self, request: QueuedRequest, base: str) -> dict[str, str]:
        at = f"{base}/requests/{request.request_id}"
        return {"request_id": request.request_id, "response_url": at, "status_url": f"{at}/status",
                "cancel_url": f"{at}/cancel"}  # fmt: skip

    def _position(self, request: QueuedRequest) -> int:
        waiting = [r for r in self.requests.values() if r.route is request.route and r.status == "IN_QUEUE"]
        return sum(1 for r in waiting if r.submitted < request.submitted)

    def _expire(self) -> None:
        now = time.monotonic()
        for request_id, request in list(self.requests.items()):
            if request.finished_at and now - request.finished_at > KEEP:
                del self.requests[request_id]

    async def shutdown(self) -> None:
        for request in self.requests.values():
            if request.work is not None:
                request.work.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(r.work for r in self.requests.values() if r.work), return_exceptions=True)


async def _json(send: Send, status: int, document: MutableMapping[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
