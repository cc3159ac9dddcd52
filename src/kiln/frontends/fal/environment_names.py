"""`fal environments list|create|delete`: fal's environments are kiln's, the names that scope
apps, secrets and named objects for both clients (`modal environment …` sees the same ones).
kiln keeps no description: one given at creation is answered back, not stored."""

from __future__ import annotations

import isolate_proto as fal_pb

from kiln.core.core import Core
from kiln.frontends.modal.dispatch import CallContext
from kiln.storage.environments import Environment


class EnvironmentHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def ListEnvironments(
        self, req: fal_pb.ListEnvironmentsRequest, ctx: CallContext
    ) -> fal_pb.ListEnvironmentsResponse:
        return fal_pb.ListEnvironmentsResponse(environments=[_info(e) for e in self.core.environments.list()])

    async def CreateEnvironment(
        self, req: fal_pb.CreateEnvironmentRequest, ctx: CallContext
    ) -> fal_pb.CreateEnvironmentResponse:
        created = self.core.environments.create(req.name)
        return fal_pb.CreateEnvironmentResponse(environment=_info(created, req.description))

    async def DeleteEnvironment(
        self, req: fal_pb.DeleteEnvironmentRequest, ctx: CallContext
    ) -> fal_pb.DeleteEnvironmentResponse:
        self.core.environments.delete(req.name)
        return fal_pb.DeleteEnvironmentResponse()


def _info(environment: Environment, description: str = "") -> fal_pb.EnvironmentInfo:
    info = fal_pb.EnvironmentInfo(name=environment.name, is_default=environment.default)
    if description:
        info.description = description
    info.created_at.FromSeconds(int(environment.created_at))
    return info
