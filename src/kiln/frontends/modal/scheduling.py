"""Runtime autoscaler overrides: `Function.update_autoscaler(...)` / `Function.autoscaler`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.core.functions import Autoscaling
from kiln.frontends.modal.dispatch import CallContext


class SchedulingHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def FunctionUpdateSchedulingParams(
        self, req: api_pb2.FunctionUpdateSchedulingParamsRequest, ctx: CallContext
    ) -> api_pb2.FunctionUpdateSchedulingParamsResponse:
        changes = overrides_from(req.settings)
        if req.warm_pool_size_override:  # the legacy form of min_containers
            changes.setdefault("min_containers", req.warm_pool_size_override)
        settings = self.core.update_autoscaler(req.function_id, changes)
        return api_pb2.FunctionUpdateSchedulingParamsResponse(current_settings=to_settings(settings))

    async def FunctionGetSchedulingParams(
        self, req: api_pb2.FunctionGetSchedulingParamsRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetSchedulingParamsResponse:
        view = self.core.autoscaler(req.function_id)
        return api_pb2.FunctionGetSchedulingParamsResponse(
            autoscaler_configuration=api_pb2.AutoscalerConfiguration(
                settings=to_settings(view.settings),
                static_settings=to_settings(view.static),
                default_settings=to_settings(Autoscaling()),
                override_settings=_only(to_settings(view.settings), view.overrides),
            )
        )


def overrides_from(settings: api_pb2.AutoscalerSettings) -> dict[str, Any]:
    """The fields a request sets, as core Autoscaling fields (max_containers 0 = no limit)."""
    changes: dict[str, Any] = {}
    for name in ("min_containers", "buffer_containers"):
        if settings.HasField(name):
            changes[name] = getattr(settings, name)
    if settings.HasField("max_containers"):
        changes["max_containers"] = settings.max_containers or None
    if settings.HasField("scaledown_window"):
        changes["scaledown_window"] = float(settings.scaledown_window)
    return changes


def _only(settings: api_pb2.AutoscalerSettings, names: Iterable[str]) -> api_pb2.AutoscalerSettings:
    partial = api_pb2.AutoscalerSettings()
    for name in names:
        setattr(partial, name, getattr(settings, name))
    return partial


def to_settings(autoscaling: Autoscaling) -> api_pb2.AutoscalerSettings:
    return api_pb2.AutoscalerSettings(
        min_containers=autoscaling.min_containers,
        max_containers=autoscaling.max_containers or 0,
        buffer_containers=autoscaling.buffer_containers,
        scaledown_window=round(autoscaling.scaledown_window),
    )
