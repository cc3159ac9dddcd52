"""Modal Servers (`@app.server`): the user's own HTTP server in each container, behind a URL.

The function gets a gateway port like a web endpoint (`_experimental_flash_urls`, which
`Server.get_url()` returns and the client prints). Each request is proxied, streamed both ways, to
the forwarded port of one ready container of the server's pool (`core/servers.py` picks it and
scales the pool by the requests in flight). Requests wait while a container starts; none ready
within the startup timeout → 503 naming why; every container at `max_concurrency` → 429.

Unless `unauthenticated=True`, a request needs a proxy token (`Modal-Key`/`Modal-Secret`) or the
bearer token `FunctionGetFlashAuthToken` issues (`Modal-Authorization: Bearer …`), as on Modal. A
`Modal-Session-Id` header biases requests with the same value toward the same container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import MutableMapping
from typing import Any

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.core.servers import ServerPool
from kiln.errors import InvalidRequest, KilnError, LimitExceeded, NotFound, ServerUnavailable, Unsupported
from kiln.frontends.modal.dispatch import CallContext
from kiln.gateway.endpoints import Endpoints, Receive, Scope, Send
from kiln.gateway.proxy import Upstream, UpstreamError, listening

log = logging.getLogger("kiln.servers")
_SESSIONS = "/_modal/sessions"
_NO_SESSION = (
    "This server takes requests in sticky sessions only (@modal.sessioned()): start one with "
    "server.sessions.start() and send `Modal-Authorization: Bearer <session token>`.\n"
)
_PROBE_INTERVAL = 0.1  # seconds between checks that a ready container's port answers
_UNAUTHORIZED = (
    "This server requires authentication: send the headers Modal-Key and Modal-Secret of a proxy "
    "token (modal.Workspace.from_context().proxy_tokens.create()), or deploy it with "
    "@app.server(unauthenticated=True).\n"
)


def is_server(function: api_pb2.Function) -> bool:
    return function.is_server


def check_server(function: api_pb2.Function) -> None:
    """Refuse the kinds of Server kiln cannot run, with the fix."""
    if function.http_config.HasField("lift_and_shift_config"):
        raise Unsupported(
            "Servers started by their image's own command (`modal server deploy --image …`) are not "
            "supported by kiln yet; define the server as a class with @app.server and start it in "
            "an @modal.enter method"
        )


def server_token_subject(function_id: str) -> str:
    return f"server:{function_id}"


class ServerBridge:
    """The ASGI app answering one server's port."""

    def __init__(
        self,
        core: Core,
        endpoints: Endpoints,
        upstream: Upstream,
        function_id: str,
        unauthenticated: bool,
        sessioned: bool = False,
    ) -> None:
        self.core = core
        self.endpoints = endpoints
        self.upstream = upstream
        self.function_id = function_id
        self.unauthenticated = unauthenticated
        self.sessioned = sessioned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        headers = {bytes(k).lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers", [])}
        bearer = _bearer(headers)
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] in ("http.response.start", "websocket.accept")
            await send(message)

        try:
            server = self.core.server(self.function_id)
            if self.sessioned and scope["path"].startswith(_SESSIONS):
                await self._session_control(scope, send, headers, server)
                return
            pinned = server.session(bearer) if self.sessioned and bearer else None
            if self.sessioned and pinned is None:
                await _refuse(scope, send, 401, _NO_SESSION)
                return
            if pinned is None and not self.unauthenticated and not self._authorized(headers):
                await _refuse(scope, send, 401, _UNAUTHORIZED)
                return
            async with server.request(headers.get(b"modal-session-id", ""), pinned=pinned) as task:
                assert task.http_address is not None
                if scope["type"] == "http":
                    await self.upstream.http(scope, receive, tracking_send, task.http_address)
                else:
                    await self.upstream.websocket(scope, receive, tracking_send, task.http_address)
        except NotFound as exc:
            listing = f"The web endpoints of this kiln server:\n{self.endpoints.listing()}"
            await _refuse(scope, send, 404, f"{exc}\n{listing}")
        except LimitExceeded as exc:
            await _refuse(scope, send, 429, f"{exc}\n")
        except ServerUnavailable as exc:
            await _refuse(scope, send, 503, f"{exc}\n")
        except UpstreamError as exc:
            if not started:
                await _refuse(scope, send, 502, f"Bad gateway: {exc}. See `modal app logs`.\n")

    async def _session_control(
        self, scope: Scope, send: Send, headers: dict[bytes, str], server: ServerPool
    ) -> None:
        """`server.sessions.start()` and `.terminate()`: the client's calls carry the server's
        bearer token (FunctionGetFlashAuthToken)."""
        subject = server_token_subject(self.function_id)
        if not self.core.signed_urls.check_bearer(_bearer(headers), subject):
            await _refuse(
                scope, send, 401, "Session control needs this server's token; use server.sessions.\n"
            )
            return
        if scope["path"] == f"{_SESSIONS}/start":
            idle = headers.get(b"x-modal-server-session-idle-timeout", "600")
            session = await server.start_session(float(idle) if idle.isdigit() else 600.0)
            await _reply(send, 200, json.dumps({"session_id": session.session_id, "token": session.token}))
        elif scope["path"] == f"{_SESSIONS}/terminate":
            ended = server.end_session(headers.get(b"x-modal-server-session-token", ""))
            await _reply(send, 200 if ended else 404, "{}")
        else:
            await _refuse(scope, send, 404, "Unknown session control path.\n")

    def _authorized(self, headers: dict[bytes, str]) -> bool:
        bearer = _bearer(headers)
        if bearer:
            return self.core.signed_urls.check_bearer(bearer, server_token_subject(self.function_id))
        key, secret = headers.get(b"modal-key", ""), headers.get(b"modal-secret", "")
        return self.core.proxy_tokens.verify(key, secret)


def _bearer(headers: dict[bytes, str]) -> str:
    value = headers.get(b"modal-authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else ""


async def _reply(send: Send, status: int, body: str) -> None:
    data = body.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _refuse(scope: Scope, send: Send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008 if status == 401 else 1011, "reason": text[:120]})
        return
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServerHandlers:
    """The client's RPCs about servers: the bearer token its session calls carry, and which
    containers serve."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._probes: set[asyncio.Task[None]] = set()

    async def ContainerServerLifecycleReady(
        self, req: api_pb2.ContainerServerLifecycleReadyRequest, ctx: CallContext
    ) -> empty_pb2.Empty:
        """A server container's `@enter` is done. Its server may still be starting (`Popen` of a
        server returns at once), so requests go to it once its port answers; until then (and
        past its startup timeout, when it is stopped) requests wait for it."""
        task = self.core.task(ctx.task_id)
        if task.http_address is None:
            raise InvalidRequest("this container is not a server's (`@app.server`)")
        probe = asyncio.ensure_future(self._ready_when_listening(ctx.task_id, task.http_address))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)
        return empty_pb2.Empty()

    async def _ready_when_listening(self, task_id: str, address: tuple[str, int]) -> None:
        while not await listening(address):
            await asyncio.sleep(_PROBE_INTERVAL)
            try:
                self.core.task(task_id)
            except KilnError:
                return  # the container is gone
        with contextlib.suppress(KilnError):
            self.core.server_ready(task_id)

    async def FunctionGetFlashAuthToken(
        self, req: api_pb2.FunctionGetFlashAuthTokenRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetFlashAuthTokenResponse:
        self.core.function(req.function_id)
        token = self.core.signed_urls.bearer(server_token_subject(req.function_id))
        return api_pb2.FunctionGetFlashAuthTokenResponse(token=token)

    async def FlashContainerList(
        self, req: api_pb2.FlashContainerListRequest, ctx: CallContext
    ) -> api_pb2.FlashContainerListResponse:
        self.core.function(req.function_id)
        response = api_pb2.FlashContainerListResponse()
        for task in self.core.tasks():
            if task.function.function_id == req.function_id and task.ready and task.http_address:
                host, port = task.http_address
                response.containers.add(task_id=task.task_id, host=host, port=port)
        return response
