"""A reverse proxy, in ASGI, to an HTTP server on the host's loopback (a container's forwarded
port): requests and responses stream both ways, websockets are relayed message by message.

aiohttp speaks the upstream side: the client already depends on it (so it costs nothing), and
one library gives streamed HTTP bodies and websockets with a shared connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp

from kiln.gateway.types import Receive, Scope, Send

# Headers about one hop, not the request (RFC 9110 §7.6.1), and the proxy's own credentials.
_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"modal-key", b"modal-secret", b"modal-authorization",
}  # fmt: skip
_WS_HANDSHAKE = {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
_CHUNK = 64 * 1024


class Upstream:
    """One connection pool to the upstream servers; closed with the gateway."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                auto_decompress=False,  # bodies pass through as the server sent them
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def http(self, scope: Scope, receive: Receive, send: Send, address: tuple[str, int]) -> None:
        """Relay one HTTP request to `address` and its response back, both streamed."""
        headers = _forwarded_headers(scope)
        url = _url(scope, address, "http")
        try:
            async with self.session().request(
                scope["method"],
                url,
                headers=headers,
                data=_body(receive) if _has_body(scope) else None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as response:
                quick_ack(response)
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        # uvicorn, serving the client, adds its own Date.
                        "headers": [
                            (k.lower(), v)
                            for k, v in response.raw_headers
                            if k.lower() not in _HOP | {b"date"}
                        ],
                    }
                )
                async for chunk in response.content.iter_chunked(_CHUNK):
                    quick_ack(response)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"the server in the container closed the connection ({exc})") from exc

    async def websocket(self, scope: Scope, receive: Receive, send: Send, address: tuple[str, int]) -> None:
        """Relay a websocket: connect upstream first, then accept the client with the same
        subprotocol, then copy messages both ways until either side closes."""
        headers = [(k, v) for k, v in _forwarded_headers(scope) if k.lower().encode() not in _WS_HANDSHAKE]
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            upstream = await self.session().ws_connect(
                _url(scope, address, "ws"),
                headers=headers,
                protocols=tuple(scope.get("subprotocols") or ()),
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.ClientError as exc:
            await send({"type": "websocket.close", "code": 1011, "reason": "the server refused"})
            raise UpstreamError(f"the server in the container refused the websocket ({exc})") from exc
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            to_server = asyncio.ensure_future(_client_to_server(receive, upstream))
            try:
                async for message in upstream:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await send({"type": "websocket.send", "text": message.data})
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await send({"type": "websocket.send", "bytes": message.data})
                    else:
                        break
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": upstream.close_code or 1000, "reason": ""})
            finally:
                to_server.cancel()


def quick_ack(response: aiohttp.ClientResponse) -> None:
    """Acknowledge what the upstream socket has received now, not after the delayed-ACK timer.

    A forwarded container port is served by pasta, whose socket toward us keeps Nagle's
    algorithm: the second segment of a response (the body after the headers) waits for our ACK,
    which Linux delays up to 40 ms. Asking for a quick ACK once data has arrived sends the pending
    ACK at once (measured: 44 ms → 0.25 ms per request on an idle machine)."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


async def listening(address: tuple[str, int], patience: float = 1.0) -> bool:
    """Whether a server listens at `address`. A forwarded port always accepts (the forwarder
    does), then closes at once when nothing listens behind it; so the test is whether a request
    gets an answer, or the connection at least stays open for `patience` seconds."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), patience)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return bool(await asyncio.wait_for(reader.read(1), patience))
    except asyncio.TimeoutError:
        return True  # still open: something accepted the request and is slow to answer
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class UpstreamError(Exception):
    """The upstream server failed the exchange (refused, reset, closed early)."""


async def _client_to_server(receive: Receive, upstream: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=message.get("code", 1000))
            return
        if message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])
        elif message.get("text") is not None:
            await upstream.send_str(message["text"])


def _url(scope: Scope, address: tuple[str, int], scheme: str) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    target = path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    return f"{scheme}://{address[0]}:{address[1]}{target}"


def _forwarded_headers(scope: Scope) -> list[tuple[str, str]]:
    """The client's headers without hop-by-hop ones and proxy credentials, plus X-Forwarded-*."""
    headers = [
        (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
        for k, v in scope.get("headers", [])
        if bytes(k).lower() not in _HOP
    ]
    client = scope.get("client")
    if client:
        headers.append(("X-Forwarded-For", str(client[0])))
    headers.append(("X-Forwarded-Proto", "https" if scope.get("scheme") in ("https", "wss") else "http"))
    return headers


def _has_body(scope: Scope) -> bool:
    names = {bytes(k).lower() for k, _ in scope.get("headers", [])}
    return b"content-length" in names or b"transfer-encoding" in names


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return
