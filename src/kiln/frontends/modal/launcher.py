"""How a Modal function's container boots: image layers, mounts, the client's entrypoint, and a
private unix socket back to the server.

The container runs `python -m modal._container_entrypoint` with the environment the client's
runtime reads (MODAL_SERVER_URL, MODAL_CONTAINER_ARGUMENTS_PATH, MODAL_TASK_ID, …). The socket
is the container's identity: requests on it are from this task and no other.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import grpclib.server
from modal_proto import api_pb2

from kiln.config import host_network_env
from kiln.containers import (
    MOUNT,
    Bind,
    ContainerHandle,
    ContainerSpec,
    Layer,
    OutputSink,
    PortForward,
    Runtime,
)
from kiln.core.core import Core
from kiln.core.pool import Task
from kiln.errors import ContainerStartError, KilnError
from kiln.frontends.modal.client_deps import IMAGE_BUILDER_VERSION, ClientDeps
from kiln.frontends.modal.dispatch import CallContext, Service, build_mapping
from kiln.frontends.modal.registry import Registry
from kiln.frontends.modal.scope import ContainerScope
from kiln.frontends.modal.volumes import mount_binds
from kiln.images.pythons import find_host_pythons
from kiln.staging import process_dir

_INSIDE = "/.kiln"  # where the task's socket and arguments appear in the sandbox
_TAIL = 30


class ModalLauncher:
    def __init__(
        self,
        core: Core,
        runtime: Runtime,
        client_deps: ClientDeps,
        registry: Registry,
        handlers: list[object],
    ) -> None:
        self.core = core
        self.runtime = runtime
        self.client_deps = client_deps
        self.registry = registry
        self.handlers = handlers
        # Unix socket paths are limited to 108 bytes: keep the per-task directories short. A
        # killed server's directory is removed by the next one.
        # The container (an unprivileged id) reaches its own task directory, not the others.
        self.sockets_root = process_dir(Path("/tmp"), "kiln-", runtime.ids.gid if runtime.ids else None)
        self._servers: dict[str, grpclib.server.Server] = {}
        # The loopback port of the sandboxes' command router for containers (set by the frontend).
        self.router_port: Callable[[], Awaitable[int]] | None = None

    async def launch(
        self, task: Task, upper: Path | None = None, sink: OutputSink | None = None
    ) -> ContainerHandle:
        """Start the task's container. An image build's function passes `upper` (its writes become
        the layer) and `sink` (its output goes to the build log instead of the app's)."""
        core = self.core
        modal_function = self.registry.functions.get(task.function.function_id)
        if modal_function is None or modal_function.function is None:
            raise ContainerStartError(f"function {task.function.function_id} has no definition")
        function = modal_function.function
        app = core.app(task.function.app_id)
        image_layers, image_config = core.images.layers(function.image_id)
        minor = _python_minor(image_config.python_version_info)
        python = find_host_pythons().get(minor) if minor else None
        interpreter = python.prefix / "bin" / f"python{minor}" if python else None
        mount_layers: list[Layer] = []
        for mount_id in function.mount_ids:
            await asyncio.to_thread(core.mounts.layer, mount_id, interpreter)  # materialized once
            mount_layers.append(Layer(MOUNT, mount_id))
        if function.mount_client_dependencies:
            if not minor:
                raise ContainerStartError(
                    "the image's Python version is unknown, so kiln cannot attach the client's runtime "
                    "dependencies; build the image from a python base (Image.debian_slim(), or add_python=...)"
                )
            mount_layers.append(await self.client_deps.layer(IMAGE_BUILDER_VERSION, minor))

        try:
            volumes = await asyncio.to_thread(mount_binds, core, function)
        except KilnError as exc:
            raise ContainerStartError(str(exc)) from exc
        task_dir = self.sockets_root / task.task_id
        task_dir.mkdir()
        arguments = api_pb2.ContainerArguments(
            task_id=task.task_id,
            function_id=task.function.function_id,
            app_id=app.app_id,
            function_def=function,
            app_layout=self.registry.app_layout(app.app_id, app.function_ids, app.class_ids),
            environment_name=app.environment,
            serialized_params=modal_function.serialized_params,
        )
        (task_dir / "arguments.bin").write_bytes(arguments.SerializeToString())
        scope = ContainerScope(core, task.task_id, task.function.function_id, app.app_id, app.environment)
        mapping = build_mapping(
            self.handlers, _context_for(task.task_id), core.config.max_message_bytes, scope.check
        )
        server = grpclib.server.Server([Service(mapping)])
        await server.start(path=str(task_dir / "modal.sock"))
        if self.runtime.ids is not None:
            self.runtime.ids.own(task_dir, task_dir / "modal.sock")
        self._servers[task.task_id] = server

        workdir = image_config.workdir or "/root"
        env = {
            **host_network_env(),
            **image_config.env,
            **core.secrets.env_of(list(function.secret_ids)),
            # "localhost" (ignored for a socket path) lets the client accept the plain-HTTP
            # command router of the sandboxes it creates (`router_port`).
            "MODAL_SERVER_URL": f"unix://localhost{_INSIDE}/modal.sock",
            "MODAL_IS_REMOTE": "1",
            "MODAL_CONTAINER_ARGUMENTS_PATH": f"{_INSIDE}/arguments.bin",
            "MODAL_TASK_ID": task.task_id,
            "MODAL_IMAGE_ID": function.image_id,
            "MODAL_ENVIRONMENT": app.environment,
            "PYTHONUNBUFFERED": "1",
            # Heartbeats carry cancellations to running inputs: every 3 s instead of Modal's 15 s
            # (a local RPC costs nothing) so FunctionCall.cancel() takes effect promptly.
            "MODAL_HEARTBEAT_INTERVAL": "3",
            # Modal containers import user code from /root and the client from /pkg.
            "PYTHONPATH": "/pkg" if workdir == "/root" else "/root:/pkg",
        }
        tail: list[str] = []
        logs = core.app_logs(app.app_id)

        def to_app_log(fd: int, data: bytes) -> None:
            text = data.decode(errors="replace")
            logs.append(text, fd, task_id=task.task_id, function_id=task.function.function_id)
            tail.extend(text.splitlines())
            del tail[:-_TAIL]

        task.output_tail = tail
        resources = task.function.resources
        forwards = []
        if task.function.http_port:  # a server: its port, reached from the host's loopback
            host_port = free_loopback_port()
            forwards.append(PortForward(host_port, task.function.http_port))
            task.http_address = ("127.0.0.1", host_port)
        spec = ContainerSpec(
            image=image_layers,
            mounts=list(reversed(mount_layers)),
            argv=["python", "-m", "modal._container_entrypoint"],
            env=env,
            cwd=workdir,
            binds=[Bind(task_dir, _INSIDE, read_only=False), *volumes],
            cpu_limit=(resources.milli_cpu_max or resources.milli_cpu) / 1000,
            memory_limit_mb=resources.memory_mb_max or resources.memory_mb,
            gpus=list(task.placement.gpus),
            upper=upper,
            # Payloads over 2 MiB travel as blobs: the container fetches and uploads them at the
            # signed URLs of kiln's HTTP port, the one host port it may reach.
            # And the command router of sandboxes it creates: a port serving that service alone,
            # where each request needs a token the server gave for one sandbox.
            host_ports=_loopback_port(core.http_url)
            + ([await self.router_port()] if self.router_port else []),
            forwards=forwards,
        )
        return await self.runtime.start(spec, sink or to_app_log)

    async def cleanup(self, task: Task) -> None:
        server = self._servers.pop(task.task_id, None)
        if server is not None:
            server.close()
            await server.wait_closed()
        shutil.rmtree(self.sockets_root / task.task_id, ignore_errors=True)

    async def shutdown(self) -> None:
        for task_id in list(self._servers):
            self._servers.pop(task_id).close()
        shutil.rmtree(self.sockets_root, ignore_errors=True)


def _context_for(task_id: str) -> Callable[[object], CallContext]:
    context = CallContext(task_id=task_id)
    return lambda stream: context


def free_loopback_port() -> int:
    """A port of the host's loopback nobody listens on now (the runtime binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _loopback_port(url: str) -> list[int]:
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    return [parts.port] if loopback and parts.port else []


def _python_minor(version_info: str) -> str:
    match = re.search(r"(\d+)\.(\d+)", version_info)
    return f"{match.group(1)}.{match.group(2)}" if match else ""
