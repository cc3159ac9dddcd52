"""Web endpoints' listeners: one loopback port per endpoint, the same port for the same name.

An endpoint's URL is `http://127.0.0.1:<port>/`: the app is served at the root path (many apps
assume `/`), and every HTTP client resolves it — names under `.localhost` are not resolved by all
client libraries, a loopback port always is. The port is derived from the endpoint's key
(environment, app, label) and kept in `KILN_HOME/endpoints.json`, so a redeploy or a restart
keeps the URL. What answers on a port is the frontend's ASGI bridge for that endpoint; a
redeploy swaps the bridge without closing the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from kiln.gateway.proxy import Upstream
from kiln.gateway.types import ASGIApp, Receive, Scope, Send

__all__ = ["ASGIApp", "Endpoints", "Receive", "Scope", "Send"]
log = logging.getLogger("kiln.gateway")

PORTS = range(20000, 30000)  # where endpoints' ports are chosen


class Endpoints:
    def __init__(self, state_file: Path, host: str = "127.0.0.1") -> None:
        self.state_file = state_file
        self.host = host
        self._ports: dict[str, int] = self._load()
        self._apps: dict[int, ASGIApp] = {}
        self._servers: dict[int, Any] = {}  # port → uvicorn.Server
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.upstream = Upstream()  # the connections to servers in containers that endpoints proxy to

    def _load(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self) -> None:
        staging = self.state_file.with_suffix(".tmp")
        staging.write_text(json.dumps(self._ports, indent=1, sort_keys=True))
        os.replace(staging, self.state_file)

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def expose(self, key: str, app: ASGIApp) -> str:
        """Serve `app` for the endpoint `key`; returns its URL (the same for the same key)."""
        port = self._ports.get(key)
        if port is not None and port in self._servers:
            self._apps[port] = app  # a redeploy: same port, new code
            return self.url(port)
        sock, port = self._bind(key, port)
        if self._ports.get(key) != port:
            self._ports[key] = port
            self._save()
        self._apps[port] = app
        self._serve(port, sock)
        return self.url(port)

    def _bind(self, key: str, known: int | None) -> tuple[socket.socket, int]:
        start = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % len(PORTS)
        taken = set(self._ports.values()) - ({known} if known else set())
        candidates = [known] if known else []
        candidates += [PORTS[(start + n) % len(PORTS)] for n in range(len(PORTS))]
        for port in candidates:
            if port is None or port in taken:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
            except OSError:
                sock.close()
                if port == known:
                    log.warning(
                        "port %d of endpoint %s is taken by another program; choosing another", port, key
                    )
                continue
            sock.listen(1024)
            sock.setblocking(False)
            return sock, port
        raise RuntimeError("no free port left for web endpoints")

    def _serve(self, port: int, sock: socket.socket) -> None:
        import uvicorn

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            await self._apps[port](scope, receive, send)

        # The app's own Server header (a web_server's) is the one the client sees; kiln adds none.
        config = uvicorn.Config(dispatch, log_level="warning", lifespan="off", server_header=False)
        server = uvicorn.Server(config)
        self._servers[port] = server
        self._tasks[port] = asyncio.ensure_future(server.serve(sockets=[sock]))

    def listing(self) -> str:
        """Every endpoint this server answers for, one per line (for 404 pages)."""
        served = sorted((key, port) for key, port in self._ports.items() if port in self._servers)
        return "".join(f"  {self.url(port)}/  {key}\n" for key, port in served) or "  (none)\n"

    async def shutdown(self) -> None:
        for server in self._servers.values():
            server.should_exit = True
        for task in self._tasks.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        await self.upstream.close()
