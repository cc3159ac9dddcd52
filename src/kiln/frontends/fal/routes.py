"""fal's HTTP data plane: `<run host>/<owner>/<app>/<path>` reaches the app's runners.

A request's app prefix is stripped (the runner serves `/<path>`), it waits for a runner with
room (fal queues rather than refuses), and goes through the same streaming proxy as Modal
Servers. Private apps want `Authorization: Key <id>:<secret>` (kiln's token pair); public ones
take anyone, as on fal. Unknown apps get a 404 naming the apps this server runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import isolate_proto as fal_pb

from kiln.core.core import Core
from kiln.errors import KilnError, LimitExceeded, NotFound, ServerUnavailable
from kiln.frontends.fal.keys import FalAuth
from kiln.gateway.proxy import Upstream, UpstreamError, quick_ack
from kiln.gateway.types import Receive, Scope, Send
from kiln.ids import new_id

OWNER = "kiln"  # the account namespace in fal's URLs (kiln serves one user)


@dataclass
class Route:
    function_id: str
    public: bool


class FalRoutes:
    """The apps the run and queue hosts answer for, by `<owner>/<app>`, and their URLs."""

    def __init__(self, run_url: str, queue_url: str = "", ws_url: str = "") -> None:
        self.run_url = run_url
        self.queue_url = queue_url or run_url
        self.ws_url = ws_url or run_url.replace("http", "ws", 1)
        self._routes: dict[str, Route] = {}
        self._shadowed: dict[str, list[Route]] = {}  # routes a `fal run` of the same name covers

    def add(self, name: str, function_id: str, public: bool) -> fal_pb.ServiceURLs:
        """Serve the app at `/<owner>/<name>`. A `fal run` of a deployed app's name takes the
        URL while it runs; the deployed app has it back when the run ends."""
        key = f"{OWNER}/{name}"
        current = self._routes.get(key)
        if current is not None and current.function_id != function_id:
            self._shadowed.setdefault(key, []).append(current)
        self._routes[key] = Route(function_id, public)
        run = f"{self.run_url}/{OWNER}/{name}"
        return fal_pb.ServiceURLs(
            playground=run,
            run=run,
            queue=f"{self.queue_url}/{OWNER}/{name}",
            ws=f"{self.ws_url}/{OWNER}/{name}",
            log=run,
        )

    def remove(self, name: str, function_id: str) -> None:
        key = f"{OWNER}/{name}"
        shadowed = [r for r in self._shadowed.get(key, []) if r.function_id != function_id]
        self._shadowed[key] = shadowed
        route = self._routes.get(key)
        if route is not None and route.function_id == function_id:
            if shadowed:
                self._routes[key] = shadowed.pop()
            else:
                del self._routes[key]

    def find(self, path: str) -> tuple[Route, str] | None:
        """The route a path names and the path the runner sees."""
        parts = path.lstrip("/").split("/", 2)
        if len(parts) < 2:
            return None
        route = self._routes.get(f"{parts[0]}/{parts[1]}")
        return (route, "/" + (parts[2] if len(parts) > 2 else "")) if route else None

    def listing(self) -> str:
        return "".join(f"  {self.run_url}/{key}\n" for key in sorted(self._routes)) or "  (none)\n"


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str


class FalHost:
    """What fal's HTTP hosts share: the apps' routes, their key check, and the proxy to runners."""

    def __init__(self, core: Core, routes: FalRoutes, upstream: Upstream, auth: FalAuth) -> None:
        self.core = core
        self.routes = routes
        self.upstream = upstream
        self.auth = auth

    def admit(self, scope: Scope) -> tuple[Route, str] | Refusal:
        """The app a request names and the path its runner sees, or why it may not reach it."""
        found = self.routes.find(scope["path"])
        if found is None:
            listing = self.routes.listing()
            return Refusal(404, f"No fal app at {scope['path']}. The apps of this kiln server:\n{listing}")
        route, _ = found
        if not route.public and not self.auth.accepts_header(scope):
            return Refusal(401, "This app is private: send `Authorization: Key <FAL_KEY>`.")
        return found

    async def forward(
        self, address: tuple[str, int], method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One buffered request to a runner: its status, headers (hop-by-hop ones dropped) and body."""
        host, port = address
        async with self.upstream.session().request(
            method, f"http://{host}:{port}{path}", headers=headers, data=body, allow_redirects=False
        ) as response:
            quick_ack(response)
            data = await response.read()
            kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP]
            return response.status, kept, data


# Of a runner's buffered answer, what described its own connection and encoding.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class FalGateway(FalHost):
    """The ASGI app of the run host."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        admitted = self.admit(scope)
        if isinstance(admitted, Refusal):
            await _text(send, admitted.status, admitted.reason + "\n")
            return
        route, path = admitted
        started = False

        async def tracking(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        inner: MutableMapping[str, Any] = dict(scope)
        inner["path"], inner["raw_path"] = path, path.encode()
        try:
            server = self.core.server(route.function_id)
            async with server.request(queue_when_full=True, wait=server.function.startup_timeout) as task:
                assert task.http_address is not None
                if scope["type"] == "websocket":
                    await self.upstream.websocket(inner, receive, send, task.http_address)
                    return
                try:  # request_timeout bounds the request once a runner has it
                    async with asyncio.timeout(server.function.timeout):
                        await self.upstream.http(inner, receive, tracking, task.http_address)
                except TimeoutError:
                    if not started:
                        await _text(
                            send,
                            504,
                            f"The request ran past the app's request_timeout of {server.function.timeout:g} s\n",
                            [(b"x-fal-request-timeout-type", b"user")],
                        )
        except NotFound as exc:
            await _text(send, 404, f"{exc}\n")
        except (LimitExceeded, ServerUnavailable) as exc:
            await _text(send, 503, f"{exc}\n")
        except UpstreamError as exc:
            await _text(send, 502, f"Bad gateway: {exc}\n")


async def _text(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers += extra or []
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # a websocket scope, or the client left
        return


class FalWsGateway(FalHost):
    """The ASGI app of the ws host: fal's HTTP over a websocket (`fal.apps.ws`). Each JSON text
    frame the client sends is one request to the app's path; the answer comes back framed by
    `{"type": "start", "request_id": …}` and `{"type": "end", "request_id": …}` text frames, the
    response body as one frame between them (text when it decodes, else binary)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            if scope["type"] == "http":
                await _text(
                    send, 400, "This host speaks fal's HTTP over websockets; use the run host for HTTP\n"
                )
            return
        admitted = self.admit(scope)
        if (await receive())["type"] != "websocket.connect":
            return
        if isinstance(admitted, Refusal):
            await send({"type": "websocket.close", "code": 1008, "reason": admitted.reason[:120]})
            return
        route, path = admitted
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("bytes")  # a binary frame is relayed as it came
            body = raw if raw is not None else (message.get("text") or "").encode()
            request_id = new_id("rq")
            data = await self._request(route, path, body, request_id)
            await send(
                {"type": "websocket.send", "text": json.dumps({"type": "start", "request_id": request_id})}
            )
            try:
                await send({"type": "websocket.send", "text": data.decode()})
            except UnicodeDecodeError:
                await send({"type": "websocket.send", "bytes": data})
            await send(
                {"type": "websocket.send", "text": json.dumps({"type": "end", "request_id": request_id})}
            )

    async def _request(self, route: Route, path: str, body: bytes, request_id: str) -> bytes:
        try:
            server = self.core.server(route.function_id)
            async with server.request(queue_when_full=True, wait=server.function.startup_timeout) as task:
                assert task.http_address is not None
                headers = [("content-type", "application/json"), ("x-fal-request-id", request_id)]
                async with asyncio.timeout(server.function.timeout):
                    _, _, data = await self.forward(task.http_address, "POST", path, headers, body)
                    return data
        except (KilnError, aiohttp.ClientError, TimeoutError) as exc:
            return json.dumps({"type": "x-fal-error", "reason": str(exc) or type(exc).__name__}).encode()
