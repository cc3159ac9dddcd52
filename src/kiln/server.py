"""The kiln server: assembles storage, images, containers, the core and the frontends, and runs
them on one asyncio loop. Used by `kiln server` and embedded by `kiln run`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.server

from kiln.auth import Credentials, SignedUrls, check_exposure, server_tls
from kiln.config import Config, host_network_env
from kiln.containers import DEPS, IMAGE, MOUNT, BubblewrapRuntime, Isolation, Layer, check_sandbox_support
from kiln.containers.bubblewrap import stop_stale_networks
from kiln.core.core import Core
from kiln.frontends.fal.files import FalFiles
from kiln.frontends.fal.keys import FalAuth
from kiln.frontends.fal.queue import FalQueue
from kiln.frontends.fal.routes import FalGateway, FalRoutes, FalWsGateway
from kiln.frontends.fal.service import FalFrontend
from kiln.frontends.modal.client_deps import ClientDeps
from kiln.frontends.modal.service import ModalFrontend
from kiln.gateway.endpoints import Endpoints as WebEndpoints
from kiln.gateway.tls import LoopbackTLS
from kiln.images.base import BaseResolver
from kiln.images.builder import Builder
from kiln.images.gc import Collector
from kiln.images.layer_store import LayerStore
from kiln.images.service import ImageService
from kiln.locks import hold_exclusive
from kiln.staging import process_dir
from kiln.storage.blobs import BlobStore
from kiln.storage.fal_requests import FalRequests
from kiln.storage.mounts import MountStore
from kiln.storage.state import StateStore

log = logging.getLogger("kiln")
# grpclib reports every stream its client ends early at INFO; for kiln that is routine (a
# container stops reading a web request's data_in once it has the body), not news.
logging.getLogger("grpclib.server").setLevel(logging.WARNING)


@dataclass
class Endpoints:
    """Where clients reach the server, and the token pair they must present."""

    grpc_url: str
    http_url: str
    credentials: Credentials
    fal_grpc_host: str = ""  # fal's control plane (host:port, plain gRPC on loopback)
    fal_run_host: str = ""  # fal's HTTP data plane (host:port, https)
    fal_queue_host: str = ""  # fal's queue API (host:port, https)
    fal_rest_host: str = ""  # fal's REST host: app files (host:port, http)
    fal_ws_host: str = ""  # fal's HTTP over websockets (host:port, wss)
    ca_bundle: str = ""  # the roots clients trust kiln's https with (SSL_CERT_FILE)


class KilnServer:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.core: Core | None = None
        self.frontends: list[Any] = []
        self.runtime: BubblewrapRuntime | None = None
        self._grpc: grpclib.server.Server | None = None
        self._http: Any = None  # uvicorn.Server, imported once the gRPC side is up
        self._http_task: asyncio.Task[None] | None = None
        self.endpoints: Endpoints | None = None
        self._state_lock: int | None = None
        self.web: WebEndpoints | None = None
        self.fal: FalFrontend | None = None
        self._fal_grpc: grpclib.server.Server | None = None
        self.fal_queue: FalQueue | None = None
        self._fal_http: list[Any] = []  # uvicorn.Servers of fal's run and queue hosts
        self._fal_http_tasks: list[asyncio.Task[None]] = []
        self.ready_seconds = 0.0

    async def start(self) -> Endpoints:
        started = time.monotonic()
        config = self.config
        check_exposure(config)
        grpc_tls = server_tls(config, ["h2"])
        check_sandbox_support()
        home = config.home
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        credentials = Credentials.load_or_create(home)
        # This process's scratch (container upper dirs, build contexts): a killed server's is
        # removed here, at the next start.
        stop_stale_networks()
        scratch = process_dir(config.run_dir)
        state_db, logs_dir = self._state_paths(scratch)
        state = StateStore(state_db)
        blobs = BlobStore(config.blobs_dir)
        layers = LayerStore(config.layers_dir)
        network_env = host_network_env()
        isolation = Isolation(pids_max=config.container_pids_max, memory_mb=config.default_memory_mb)
        mounts = MountStore(state, blobs, config.mounts_dir, dir_owner=(isolation.ids.uid, isolation.ids.gid))
        roots = {MOUNT: config.mounts_dir, DEPS: config.deps_dir}

        def layer_path(layer: Layer) -> Path:
            return layers.fs_path(layer.key) if layer.store == IMAGE else roots[layer.store] / layer.key

        runtime = BubblewrapRuntime(scratch, home, layer_path, isolation)
        self.runtime = runtime
        collector = Collector(
            layers, mounts.trees, mounts.remove_tree, int(config.layer_store_max_gb * 2**30)
        )
        builder = Builder(
            layers,
            runtime,
            BaseResolver(home, network_env=network_env),
            scratch,
            network_env,
            package_cache=config.package_cache_dir,
            collector=collector,
            ids=isolation.ids,
        )
        core = Core(
            config,
            state,
            blobs,
            mounts,
            ImageService(builder, state),
            logs_dir=logs_dir,
            volume_owner=(isolation.ids.uid, isolation.ids.gid),
            # A second process on this home keeps its volumes with its private state.
            volumes_home=state_db.parent,
        )
        self.core = core
        inherited = inherited_sockets()
        http_sock = inherited[1] if len(inherited) > 1 else _bind(config.host, config.http_port)
        http_host, http_port = http_sock.getsockname()[:2]
        scheme = "https" if grpc_tls else "http"
        core.http_url = f"{scheme}://{_url_host(http_host)}:{http_port}"
        core.signed_urls = SignedUrls(credentials.signing_key, core.http_url)
        self.web = WebEndpoints(state_db.with_name("endpoints.json"))  # ports belong with the state
        ports = home / "ports.json"  # fal's hosts keep their ports across restarts (its URLs)
        owner = self._state_lock is not None  # a second process on this home borrows no ports
        fal_sock = _bind_remembered(ports, "fal_grpc", config.host, config.fal_port, owner)
        fal_run_sock = _bind_remembered(ports, "fal_run", config.host, config.fal_run_port, owner)
        fal_queue_sock = _bind_remembered(ports, "fal_queue", config.host, 0, owner)
        fal_rest_sock = _bind_remembered(ports, "fal_rest", config.host, 0, owner)
        fal_ws_sock = _bind_remembered(ports, "fal_ws", config.host, 0, owner)
        fal_run_host, fal_queue_host = _host_port(fal_run_sock), _host_port(fal_queue_sock)
        # fal_client speaks only https to these hosts: a certificate from kiln's own local CA.
        self.tls = LoopbackTLS.load_or_create(home / "tls")
        fal_ws_host = _host_port(fal_ws_sock)
        self.fal_routes = FalRoutes(
            f"https://{fal_run_host}", f"https://{fal_queue_host}", f"wss://{fal_ws_host}"
        )
        fal_auth = FalAuth(credentials, state)
        self.fal = FalFrontend(core, runtime, self.fal_routes, fal_auth)
        self.frontends = [
            ModalFrontend(core, runtime, ClientDeps(config.deps_dir, network_env), self.web),
            self.fal,
        ]
        for frontend in self.frontends:
            core.add_frontend(frontend)
        core.start()
        self._fal_grpc = grpclib.server.Server([self.fal.service()])
        await self._fal_grpc.start(sock=fal_sock)
        gateway = FalGateway(core, self.fal_routes, self.web.upstream, fal_auth)
        # Queue requests live beside the state that names them (a second process: its scratch).
        fal_requests = FalRequests(state, state_db.parent / "fal-requests")
        self.fal_queue = FalQueue(core, self.fal_routes, self.web.upstream, fal_auth, fal_requests)
        resumed, ended = self.fal_queue.restore()
        if resumed or ended:
            log.info("fal queue: %d unfinished requests run again, %d ended with their app", resumed, ended)
        # The REST host stays plain http: fal's client speaks http to it in test mode.
        rest = FalFiles(self.fal.files, fal_auth)
        self._fal_http = [
            uvicorn_server(gateway, self.tls),
            uvicorn_server(self.fal_queue, self.tls),
            uvicorn_server(rest),
            uvicorn_server(FalWsGateway(core, self.fal_routes, self.web.upstream, fal_auth), self.tls),
        ]
        self._fal_http_tasks = [
            asyncio.ensure_future(server.serve(sockets=[sock]))
            for server, sock in zip(
                self._fal_http, (fal_run_sock, fal_queue_sock, fal_rest_sock, fal_ws_sock), strict=True
            )
        ]

        self._grpc = grpclib.server.Server([self.frontends[0].service(credentials)])
        grpc_sock = inherited[0] if inherited else _bind(config.host, config.port)
        await self._grpc.start(sock=grpc_sock, ssl=grpc_tls)
        # The HTTP socket is already listening: connections made before uvicorn is imported and
        # serving wait in its backlog, so the server is ready as soon as gRPC is.
        self._http_task = asyncio.ensure_future(self._serve_http(core, http_sock))
        grpc_host, grpc_port = grpc_sock.getsockname()[:2]
        core.grpc_url = f"{scheme}://{_url_host(grpc_host)}:{grpc_port}"
        self.endpoints = Endpoints(
            f"{scheme}://{_url_host(grpc_host)}:{grpc_port}",
            core.http_url,
            credentials,
            fal_grpc_host=_host_port(fal_sock),
            fal_run_host=fal_run_host,
            fal_queue_host=fal_queue_host,
            fal_rest_host=_host_port(fal_rest_sock),
            fal_ws_host=fal_ws_host,
            ca_bundle=str(self.tls.bundle),
        )
        self.ready_seconds = time.monotonic() - started
        log.info("kiln ready on %s (%.0f ms)", self.endpoints.grpc_url, self.ready_seconds * 1000)
        return self.endpoints

    def _state_paths(self, scratch: Path) -> tuple[Path, Path]:
        """KILN_HOME's state belongs to one server at a time (two would both restore and run the
        same calls). A second process on the same home (`kiln run` beside a `kiln server`)
        shares the content-addressed stores (layers, blobs, mounts) but keeps its own state in
        its scratch directory, which does not outlive it."""
        config = self.config
        self._state_lock = hold_exclusive(config.home / "state.lock")
        if self._state_lock is not None:
            return config.state_db, config.logs_dir
        log.warning(
            "another kiln process holds the state of %s: this one keeps its apps and calls in %s, "
            "and forgets them when it stops",
            config.home,
            scratch,
        )
        return scratch / "state.sqlite3", scratch / "logs"

    async def _serve_http(self, core: Core, sock: socket.socket) -> None:
        import uvicorn

        from kiln.gateway.http import create_app

        tls = (
            {"ssl_certfile": self.config.tls_cert, "ssl_keyfile": self.config.tls_key}
            if self.config.tls_cert
            else {}
        )
        self._http = uvicorn.Server(
            uvicorn.Config(create_app(core), log_level="warning", lifespan="off", **tls)  # type: ignore[arg-type]
        )
        await self._http.serve(sockets=[sock])

    async def stop(self) -> None:
        core = self.core
        if self.fal_queue is not None:  # first: its requests stay unfinished for the next server
            await self.fal_queue.shutdown()
        if core is not None:
            await core.stop_ephemeral_apps("The kiln server is shutting down.")
            await core.shutdown()
            await core.images.shutdown()
        if self.runtime is not None:
            await self.runtime.shutdown()
        for frontend in self.frontends:
            await frontend.shutdown()
        if self.web is not None:
            await self.web.shutdown()
        if self._grpc is not None:
            self._grpc.close()
            await self._grpc.wait_closed()
        if self._fal_grpc is not None:
            self._fal_grpc.close()
            await self._fal_grpc.wait_closed()
        for fal_http in self._fal_http:
            fal_http.should_exit = True
        for task in self._fal_http_tasks:
            await task
        if self._http_task is not None:
            if self._http is not None:
                self._http.should_exit = True
                await self._http_task
            else:
                self._http_task.cancel()
        if core is not None:
            core.close()
        if self._state_lock is not None:
            os.close(self._state_lock)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def uvicorn_server(app: Any, tls: LoopbackTLS | None = None) -> Any:
    import uvicorn

    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    return uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False, **options)
    )


def _host_port(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{_url_host(host)}:{port}"


def _bind_remembered(state: Path, name: str, host: str, port: int, remember: bool) -> socket.socket:
    """Bind `port`, or (0) the port this home used last time if it is free, else any; the port
    is remembered (by the process that owns the home's state), so URLs made with it stay valid
    across restarts."""
    try:
        known: dict[str, int] = json.loads(state.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    sock = None
    if not port and known.get(name) and remember:
        with contextlib.suppress(OSError):
            sock = _bind(host, int(known[name]))
    sock = sock or _bind(host, port)
    if remember and known.get(name) != sock.getsockname()[1]:
        known[name] = sock.getsockname()[1]
        staging = state.with_suffix(".tmp")
        staging.write_text(json.dumps(known))
        os.replace(staging, state)
    return sock


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, small gRPC frames wait on delayed ACKs:
    # every RPC took ~45 ms instead of ~1 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def inherited_sockets() -> list[socket.socket]:
    """Listening sockets handed over by a supervisor (systemd socket activation: LISTEN_PID and
    LISTEN_FDS; the first is gRPC, the second HTTP). A supervisor that keeps the sockets open
    across a restart keeps clients' new connections waiting in the backlog instead of refused,
    so even the parts of the client that do not retry a refused connection ride out a restart."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for the processes kiln starts
    sockets = []
    for fd in range(3, 3 + count):
        sock = socket.socket(fileno=fd)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
