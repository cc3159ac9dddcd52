"""The Modal frontend, assembled: handlers for the client's RPCs and the container launcher."""

from __future__ import annotations

from kiln.core.core import Core
from kiln.frontends.modal.apps import AppHandlers
from kiln.frontends.modal.calls import CallHandlers
from kiln.frontends.modal.container import ContainerHandlers
from kiln.frontends.modal.dispatch import CallContext, Service, build_mapping
from kiln.frontends.modal.functions import FunctionHandlers
from kiln.frontends.modal.images import ImageHandlers
from kiln.frontends.modal.launcher import ModalLauncher
from kiln.frontends.modal.objects import ObjectHandlers
from kiln.frontends.modal.registry import Registry
from kiln.frontends.modal.scheduling import SchedulingHandlers


class ModalFrontend:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.registry = Registry()
        self.handlers: list[object] = [
            AppHandlers(core, self.registry),
            ObjectHandlers(core),
            ImageHandlers(core),
            FunctionHandlers(core, self.registry),
            CallHandlers(core, self.registry),
            ContainerHandlers(core),
            SchedulingHandlers(core),
        ]
        self.launcher = ModalLauncher(core, self.registry, self.handlers)

    def service(self) -> Service:
        """The service for users' clients (containers get their own, per task)."""
        return Service(build_mapping(self.handlers, lambda stream: CallContext()))
