"""Modal web endpoints: HTTP requests become calls of the web function, spoken in ASGI.

Every web decorator of the client (`fastapi_endpoint`, `asgi_app`, `wsgi_app`, `web_server`) runs
an ASGI app inside the container. Per request the bridge here starts a call whose one input is
the ASGI scope (`((scope,), {})`, pickled), streams the request's messages to the container on the
call's data_in channel, and streams the `http.response.*` messages it sends back on data_out to
the HTTP client as they arrive; the call ends with a GENERATOR_DONE output.

A request body over KILN_MAX_WEB_BODY_MB gets 413 (by its Content-Length before a call starts, or
cut off as it arrives); a function that ends without a response gets a status naming the kind of
failure (502 for a container that could not start, 504 for a timeout, 500 else), never its
traceback, which is in the app's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from modal_proto import api_pb2

from kiln.core.apps import AppState
from kiln.core.calls import FunctionCall, Invocation, Output
from kiln.core.core import Core
from kiln.core.results import Status
from kiln.errors import KilnError, NotFound
from kiln.frontends.modal.servers import ServerBridge, check_server, is_server
from kiln.gateway.endpoints import Endpoints, Receive, Scope, Send

log = logging.getLogger("kiln.web")
_ASGI = api_pb2.DATA_FORMAT_ASGI
_WAIT = 30.0  # seconds between checks that a call still runs
_DRAIN = 10.0  # seconds a refused body is read (and dropped) for before the 413 goes out
_UNAUTHORIZED = (
    "This endpoint requires proxy auth: send the headers Modal-Key and Modal-Secret of a proxy "
    "token (create one with modal.Workspace.from_context().proxy_tokens.create()).\n"
)


def is_web(function: api_pb2.Function | api_pb2.MethodDefinition) -> bool:
    return function.HasField("webhook_config") and function.webhook_config.type != 0


def expose_web_endpoints(
    core: Core, endpoints: Endpoints, app_id: str, function_id: str, function: api_pb2.Function
) -> None:
    """Serve the function's web endpoints (a function, or a class's web methods) and write their
    URLs into its definition, where the client reads them."""
    app = core.app(app_id) if app_id else None
    environment = (app.environment if app else "") or "main"
    app_name = (app.name or app.description) if app else function.function_name
    # `modal deploy` makes its app INITIALIZING (then DEPLOYED); `modal run`/`serve` get `-dev`
    # URLs of their own, as on Modal, so a dev session never takes over the deployed URL.
    deploying = app is not None and app.state in (AppState.INITIALIZING, AppState.DEPLOYED)
    dev = "" if deploying else "-dev"
    if is_server(function):
        check_server(function)
        bridge: WebBridge | ServerBridge = ServerBridge(
            core,
            endpoints,
            endpoints.upstream,
            function_id,
            function.http_config.unauthenticated,
            function.is_sessioned,
        )
        url = endpoints.expose(f"{environment}/{app_name}/{function.function_name}{dev}", bridge)
        del function.flash_service_urls[:]
        function.flash_service_urls.append(url)
    if is_web(function):
        label = function.webhook_config.requested_suffix or function.function_name
        bridge = WebBridge(core, endpoints, function_id, "", function.webhook_config.requires_proxy_auth)
        function.web_url = endpoints.expose(f"{environment}/{app_name}/{label}{dev}", bridge)
    for name, method in function.method_definitions.items():
        if is_web(method):
            label = (
                method.webhook_config.requested_suffix
                or f"{function.function_name.removesuffix('.*')}-{name}"
            )
            bridge = WebBridge(core, endpoints, function_id, name, method.webhook_config.requires_proxy_auth)
            method.web_url = endpoints.expose(f"{environment}/{app_name}/{label}{dev}", bridge)


class WebBridge:
    """The ASGI app answering one web endpoint's port."""

    def __init__(
        self,
        core: Core,
        endpoints: Endpoints,
        function_id: str,
        method_name: str,
        requires_proxy_auth: bool = False,
    ) -> None:
        self.core = core
        self.endpoints = endpoints  # to name the others in a 404
        self.function_id = function_id
        self.method_name = method_name
        self.requires_proxy_auth = requires_proxy_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return  # lifespan is the container's
        if self.requires_proxy_auth and not self._authorized(scope):
            if scope["type"] == "http":
                await _plain(send, 401, _UNAUTHORIZED)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": "proxy auth required"})
            return
        limit = self.core.config.max_web_body_bytes
        if scope["type"] == "http" and int(_header(scope, b"content-length") or 0) > limit:
            # A client that waits for `100 Continue` before its body never sends it: answer now.
            if _header(scope, b"expect").lower() != b"100-continue":
                await _drain(receive)
            await _too_large(send, limit)
            return
        try:
            call = self._start(scope)
        except KilnError as exc:
            if scope["type"] == "http":
                known = f"\nThe web endpoints of this kiln server:\n{self.endpoints.listing()}"
                await _plain(send, 404 if isinstance(exc, NotFound) else 503, f"{exc}\n{known}")
            else:
                await send({"type": "websocket.close", "code": 1011, "reason": str(exc)[:120]})
            return
        response = _Response()
        pump = asyncio.ensure_future(self._pump_request(call, receive, response))
        try:
            if scope["type"] == "http":
                await self._serve_http(call, pump, send, response)
            else:
                await self._relay_websocket(call, send)
        finally:
            pump.cancel()
            if call.unfinished:
                self.core.cancel_call(call.call_id)
            self.core.release_call(call.call_id)

    async def _serve_http(
        self, call: FunctionCall, pump: asyncio.Future[None], send: Send, response: _Response
    ) -> None:
        relay = asyncio.ensure_future(self._respond(call, send, response))
        try:
            await asyncio.wait({pump, relay}, return_when=asyncio.FIRST_COMPLETED)
            if not response.too_large:
                await relay
                return
            # The body outgrew the limit (the container was told the client left): once the rest
            # of it is read and dropped, 413, unless the app had already begun its answer.
            with contextlib.suppress(BodyTooLarge):
                await pump
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            if not response.started:
                await _too_large(send, self.core.config.max_web_body_bytes)
        finally:
            relay.cancel()

    def _authorized(self, scope: Scope) -> bool:
        headers = {bytes(k).lower(): bytes(v) for k, v in scope.get("headers", [])}
        key = headers.get(b"modal-key", b"").decode(errors="replace")
        secret = headers.get(b"modal-secret", b"").decode(errors="replace")
        return self.core.proxy_tokens.verify(key, secret)

    def _start(self, scope: Scope) -> FunctionCall:
        try:
            function = self.core.function(self.function_id)
            running = self.core.app(function.app_id).running
        except NotFound:
            running = False
        if not running:
            raise NotFound("This web endpoint's app is not running; deploy or serve it again.")
        call = self.core.start_call(self.function_id, Invocation.SYNC, is_map=False, durable=False)
        payload = api_pb2.FunctionInput(
            args=pickle.dumps(((_plain_scope(scope),), {}), protocol=4),
            data_format=api_pb2.DATA_FORMAT_PICKLE,
            method_name=self.method_name,
        )
        self.core.put_inputs(call, [(0, payload.SerializeToString(), self.method_name, False)])
        return call

    async def _pump_request(self, call: FunctionCall, receive: Receive, response: _Response) -> None:
        """What the client sends (a request's body, a websocket's messages, a disconnect), to
        the container. A body past the limit (sent without a Content-Length) is cut off: the
        container sees the client leave, the rest of the body is read and dropped, and this raises
        BodyTooLarge."""
        limit, received = self.core.config.max_web_body_bytes, 0
        while True:
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    response.too_large = True
                    gone = api_pb2.Asgi(http_disconnect=api_pb2.Asgi.HttpDisconnect())
                    self.core.put_data_in(call, _ASGI, [gone.SerializeToString()])
                    self.core.cancel_call(call.call_id)
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise BodyTooLarge(f"the request's body is over {limit} bytes")
            asgi = _to_proto(message)
            if asgi is not None:
                self.core.put_data_in(call, _ASGI, [asgi.SerializeToString()])
            if message["type"] in ("http.disconnect", "websocket.disconnect"):
                return

    async def _messages_out(self, call: FunctionCall) -> AsyncIterator[api_pb2.Asgi]:
        """The ASGI messages the container puts on the call's data_out, as they arrive, until
        the call has ended and all of them are read."""
        last = 0
        while True:
            for chunk in self.core.data_out_after(call, last):
                last = chunk.index
                yield api_pb2.Asgi.FromString(chunk.data)
            if call.unfinished == 0 and not self.core.data_out_after(call, last):
                return
            await call.changed.wait(_WAIT)

    async def _relay_websocket(self, call: FunctionCall, send: Send) -> None:
        accepted, closed = False, False
        async for message in self._messages_out(call):
            kind = message.WhichOneof("type")
            if kind == "websocket_accept" and not accepted:
                accept = message.websocket_accept
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": accept.subprotocol or None,
                        "headers": _pairs(accept.headers),
                    }
                )
                accepted = True
            elif kind == "websocket_send" and accepted:
                data = message.websocket_send
                content = (
                    {"bytes": data.bytes} if data.WhichOneof("content") == "bytes" else {"text": data.text}
                )
                await send({"type": "websocket.send", **content})
            elif kind == "websocket_close":
                close = message.websocket_close
                await send({"type": "websocket.close", "code": close.code or 1000, "reason": close.reason})
                closed = True
                break
        if not closed:
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1000 if accepted else 1011, "reason": ""})

    async def _respond(self, call: FunctionCall, send: Send, response: _Response) -> None:
        ended = False
        async for message in self._messages_out(call):
            kind = message.WhichOneof("type")
            if kind == "http_response_start" and not response.started:
                start = message.http_response_start
                response.started = True
                await send(
                    {"type": "http.response.start", "status": start.status, "headers": _pairs(start.headers)}
                )
            elif kind == "http_response_body" and response.started and not ended:
                body = message.http_response_body
                await send({"type": "http.response.body", "body": body.body, "more_body": body.more_body})
                ended = not body.more_body
        if not response.started and not response.too_large:  # a 413 is _serve_http's to send
            status, text = failure_page(call.outputs[0] if call.outputs else None, self._app_name())
            await _plain(send, status, text)
        elif not ended:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _app_name(self) -> str:
        try:
            app = self.core.app(self.core.function(self.function_id).app_id)
        except NotFound:
            return "APP"
        return app.name or app.description or app.app_id


class BodyTooLarge(KilnError):
    """A web request's body is over KILN_MAX_WEB_BODY_MB."""


@dataclasses.dataclass
class _Response:
    started: bool = False  # http.response.start went to the client
    too_large: bool = False  # the request's body went past the limit


def failure_page(outcome: Output | None, app_name: str) -> tuple[int, str]:
    """What the HTTP client gets when the web function ended without a response: the kind of
    failure, never the exception (its traceback is the app's, in its logs, as on Modal)."""
    logs = f"The traceback is in the app's logs: modal app logs {app_name}\n"
    status = outcome.result.status if outcome is not None else None
    # An input that failed before any container took it: none could start (an import, @enter or
    # lifespan that raised, a web_server whose port never opened: each fails the queued inputs).
    never_ran = outcome is not None and not outcome.task_id and status == Status.FAILURE
    if status == Status.INIT_FAILURE or never_ran:
        why = (
            "this web endpoint's container could not start (a web_server that did not open its port "
            "within startup_timeout, or an import or @enter that raised)"
        )
        return 502, f"Bad Gateway: {why}.\n{logs}"
    if status == Status.TIMEOUT:
        return 504, f"Gateway Timeout: the web function ran past its timeout.\n{logs}"
    if status == Status.TERMINATED:
        return 503, "Service Unavailable: the web function's call was stopped before it responded.\n"
    return 500, f"Internal Server Error: the web function failed before it responded.\n{logs}"


def _header(scope: Scope, name: bytes) -> bytes:
    """The request's header `name` (lowercase), or b"" (uvicorn has checked Content-Length)."""
    for key, value in scope.get("headers", []):
        if bytes(key).lower() == name:
            return bytes(value).strip()
    return b""


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused request's body (for a while), so that its client, still
    sending, gets to read the answer instead of a reset connection."""

    async def rest() -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(rest(), _DRAIN)


async def _too_large(send: Send, limit: int) -> None:
    text = (
        f"Payload Too Large: web endpoints of this kiln server take request bodies of up to "
        f"{limit / 2**20:g} MiB (KILN_MAX_WEB_BODY_MB).\n"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


def _to_proto(message: MutableMapping[str, Any]) -> api_pb2.Asgi | None:
    """A client's ASGI message as the container reads it from data_in."""
    kind = message["type"]
    if kind == "http.request":
        body = api_pb2.Asgi.HttpRequest(
            body=message.get("body", b""), more_body=message.get("more_body", False)
        )
        return api_pb2.Asgi(http_request=body)
    if kind == "http.disconnect":
        return api_pb2.Asgi(http_disconnect=api_pb2.Asgi.HttpDisconnect())
    if kind == "websocket.connect":
        return api_pb2.Asgi(websocket_connect=api_pb2.Asgi.WebsocketConnect())
    if kind == "websocket.receive":
        if message.get("bytes") is not None:
            return api_pb2.Asgi(websocket_receive=api_pb2.Asgi.WebsocketReceive(bytes=message["bytes"]))
        return api_pb2.Asgi(websocket_receive=api_pb2.Asgi.WebsocketReceive(text=message.get("text") or ""))
    if kind == "websocket.disconnect":
        return api_pb2.Asgi(
            websocket_disconnect=api_pb2.Asgi.WebsocketDisconnect(code=message.get("code", 1000))
        )
    return None


def _plain_scope(scope: Scope) -> dict[str, Any]:
    """The parts of a server's scope that travel to the container (picklable, no server state)."""
    keys = ("type", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path")
    plain: dict[str, Any] = {k: scope[k] for k in keys if k in scope}
    plain["asgi"] = {"version": "3.0", "spec_version": "2.3"}
    plain["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    if scope["type"] == "websocket":
        plain["subprotocols"] = list(scope.get("subprotocols", []))
    if scope.get("client"):
        plain["client"] = tuple(scope["client"])
    if scope.get("server"):
        plain["server"] = tuple(scope["server"])
    return plain


def _pairs(flat: Any) -> list[tuple[bytes, bytes]]:
    items = list(flat)
    return list(zip(items[::2], items[1::2], strict=False))


async def _plain(send: Send, status: int, text: str) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": text.encode()})
