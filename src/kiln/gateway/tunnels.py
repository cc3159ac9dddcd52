"""TLS in front of a plain port of this machine's loopback: what a sandbox's `encrypted_ports`
get, so that `tunnel.url` (`https://127.0.0.1:PORT`) answers. The certificate is kiln's loopback
one (`gateway/tls.py`), trusted by clients that use kiln's CA bundle."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class TlsTunnel:
    """A loopback port speaking TLS that relays each connection's plain bytes to `target_port`."""

    def __init__(self, server: asyncio.Server, target_port: int) -> None:
        self._server = server
        self.target_port = target_port
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @classmethod
    async def open(cls, context: ssl.SSLContext, target_port: int) -> TlsTunnel:
        tunnel: TlsTunnel | None = None

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert tunnel is not None
            try:
                inner_reader, inner_writer = await asyncio.open_connection("127.0.0.1", tunnel.target_port)
            except OSError:
                writer.close()
                return
            tunnel._connections |= {writer, inner_writer}
            try:
                await asyncio.gather(_pump(reader, inner_writer), _pump(inner_reader, writer))
            finally:
                for w in (writer, inner_writer):
                    tunnel._connections.discard(w)
                    w.close()

        server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
        tunnel = cls(server, target_port)
        return tunnel

    async def close(self) -> None:
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError, OSError):
        writer.close()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
