"""The fal frontend, assembled: isolate's `IsolateController` service over kiln's core, its
runner launcher, and the run host's routes.

fal's client authenticates every call with gRPC metadata `auth-key-id`/`auth-key` (from
`FAL_KEY=<id>:<secret>`): kiln accepts its own token pair, the same one Modal's client uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from isolate_proto import controller_pb2

from kiln.containers import Runtime
from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.core.functions import FunctionDef, FunctionRecord
from kiln.frontends.fal.apps import AppHandlers
from kiln.frontends.fal.environment_names import EnvironmentHandlers
from kiln.frontends.fal.files import FileStore
from kiln.frontends.fal.keys import FalAuth, KeyHandlers
from kiln.frontends.fal.launcher import FalLauncher
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.fal.runner import RunnerDefinition
from kiln.frontends.fal.runs import RunHandlers
from kiln.frontends.fal.secrets import SecretHandlers
from kiln.frontends.modal.dispatch import CallContext, Service, build_mapping

CONTROLLER = controller_pb2.DESCRIPTOR.services_by_name["IsolateController"]


class FalFrontend:
    name = "fal"

    def __init__(self, core: Core, runtime: Runtime, routes: FalRoutes, auth: FalAuth) -> None:
        self.core = core
        self.routes = routes
        self.auth = auth
        self.files = FileStore(core.config.home / "fal-files")
        self._launcher = FalLauncher(core, runtime, self.files)
        runs = RunHandlers(core, routes, self._launcher)
        self.handlers: list[object] = [
            runs,
            AppHandlers(core, routes, runs),
            SecretHandlers(core),
            EnvironmentHandlers(core),
            KeyHandlers(auth),
        ]

    @property
    def launcher(self) -> FalLauncher:
        return self._launcher

    def service(self) -> Service:
        return Service(
            build_mapping(
                self.handlers,
                _key_context(self.auth),
                self.core.config.max_message_bytes,
                service=CONTROLLER,
            )
        )

    def restore_function(self, record: FunctionRecord) -> FunctionDef:
        """A fal app after a restart (or a rollback): its runners' definition, and, for a deployed
        app, its URL on the run host again. A `fal run` app never has its URL back: its client's
        Run stream ended with the old server, so nothing would give the URL up again, and it
        would hide a deployed app of the same name meanwhile (the core stops the app after its
        heartbeat grace)."""
        definition = RunnerDefinition.from_bytes(record.definition)
        if self.core.app(record.app_id).state == AppState.DEPLOYED:
            self.routes.add(definition.name, record.function_id, public=definition.public)
        return definition.function_def(record.function_id, record.app_id)

    def restore_class(self, class_id: str, app_id: str, meta: bytes) -> None:
        return None

    async def shutdown(self) -> None:
        await self._launcher.shutdown()


def _key_context(auth: FalAuth) -> Callable[[Any], CallContext]:
    def context(stream: Any) -> CallContext:
        metadata = {str(k): str(v) for k, v in (stream.metadata or {}).items()}
        key_id, key = metadata.get("auth-key-id", ""), metadata.get("auth-key", "")
        if not auth.accepts(key_id, key):
            problem = "a wrong key" if key_id or key else "no key"
            raise GRPCError(
                GrpcStatus.UNAUTHENTICATED,
                f"This request to kiln carries {problem}: set FAL_KEY to the pair `kiln server` prints "
                f"(<token id>:<token secret>), or a key made with `fal keys create`. {auth.credentials.where()}",
            )
        return CallContext(metadata=metadata)

    return context
