"""The Modal frontend, assembled: handlers for the client's RPCs and the container launcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2

from kiln.auth import Credentials
from kiln.containers import Runtime
from kiln.core.core import Core
from kiln.core.functions import FunctionDef, FunctionRecord
from kiln.frontends.modal.apps import AppHandlers
from kiln.frontends.modal.calls import CallHandlers
from kiln.frontends.modal.client_deps import ClientDeps
from kiln.frontends.modal.command_router import CommandRouter, LoopbackRouter, router_mapping
from kiln.frontends.modal.container import ContainerHandlers
from kiln.frontends.modal.dicts import DictHandlers
from kiln.frontends.modal.dispatch import CallContext, Service, build_mapping
from kiln.frontends.modal.functions import FunctionHandlers, to_core
from kiln.frontends.modal.images import ImageHandlers
from kiln.frontends.modal.launcher import ModalLauncher
from kiln.frontends.modal.logs import LogHandlers
from kiln.frontends.modal.objects import ObjectHandlers
from kiln.frontends.modal.proxy_tokens import ProxyTokenHandlers
from kiln.frontends.modal.queues import QueueHandlers
from kiln.frontends.modal.registry import Registry, decode_meta
from kiln.frontends.modal.sandboxes import SandboxHandlers
from kiln.frontends.modal.sandboxes_v1 import SandboxV1Handlers
from kiln.frontends.modal.scheduling import SchedulingHandlers
from kiln.frontends.modal.servers import ServerHandlers
from kiln.frontends.modal.tasks import TaskHandlers
from kiln.frontends.modal.volumes import VolumeHandlers
from kiln.frontends.modal.web import expose_web_endpoints
from kiln.gateway.endpoints import Endpoints


class ModalFrontend:
    name = "modal"

    def __init__(self, core: Core, runtime: Runtime, client_deps: ClientDeps, endpoints: Endpoints) -> None:
        self.core = core
        self.endpoints = endpoints
        self.registry = Registry()
        # Containers' sockets serve these same handlers (the launcher holds the list).
        self.handlers: list[object] = []
        self._launcher = ModalLauncher(core, runtime, client_deps, self.registry, self.handlers)
        self.router = CommandRouter(core)
        self.container_router = LoopbackRouter(self.router, core.config.max_message_bytes)
        self._launcher.router_port = self.container_router.ensure
        sandboxes = SandboxHandlers(core, runtime, self.container_router)
        self.handlers += [
            AppHandlers(core, self.registry),
            LogHandlers(core),
            ObjectHandlers(core),
            ImageHandlers(core, self._launcher),
            FunctionHandlers(core, self.registry, endpoints),
            CallHandlers(core),
            ContainerHandlers(core),
            SchedulingHandlers(core),
            TaskHandlers(core),
            ProxyTokenHandlers(core),
            DictHandlers(core),
            QueueHandlers(core),
            ServerHandlers(core),
            sandboxes,
            SandboxV1Handlers(core, sandboxes),
            VolumeHandlers(core, self.registry),
        ]

    @property
    def launcher(self) -> ModalLauncher:
        return self._launcher

    def service(self, credentials: Credentials) -> Service:
        """The service for users' clients, who must present `credentials`' token pair
        (containers get their own service, per task, on their own socket)."""
        limit = self.core.config.max_message_bytes
        # Sandboxes' command routers are served on the same port (their own service path and
        # their own bearer tokens).
        return Service(
            build_mapping(self.handlers, _user_context(credentials), limit)
            | router_mapping(self.router, limit)
        )

    def restore_function(self, record: FunctionRecord) -> FunctionDef:
        function = api_pb2.Function.FromString(record.definition)
        expose_web_endpoints(self.core, self.endpoints, record.app_id, record.function_id, function)
        self.registry.functions[record.function_id] = decode_meta(record, function)
        return to_core(record.function_id, record.app_id, function)

    def restore_class(self, class_id: str, app_id: str, meta: bytes) -> None:
        self.registry.classes[class_id] = (app_id, api_pb2.ClassHandleMetadata.FromString(meta))

    async def shutdown(self) -> None:
        await self._launcher.shutdown()
        await self.container_router.close()


def _user_context(credentials: Credentials) -> Callable[[Any], CallContext]:
    """A user's client: its metadata carries its version and its token pair, which must be this
    server's. ClientHello too: `modal token set` and `Client.verify` expect a wrong pair to fail
    there with AuthError (UNAUTHENTICATED), as Modal answers."""

    def context(stream: Any) -> CallContext:
        metadata = {str(k): str(v) for k, v in (stream.metadata or {}).items()}
        token_id = metadata.get("x-modal-token-id", "")
        token_secret = metadata.get("x-modal-token-secret", "")
        if not credentials.accepts(token_id, token_secret):
            problem = "carries a wrong token" if token_id or token_secret else "carries no token"
            raise GRPCError(
                GrpcStatus.UNAUTHENTICATED, f"This request to kiln {problem}. {credentials.where()}"
            )
        return CallContext(metadata=metadata)

    return context
