"""Function and class creation: Modal definitions → core FunctionDefs plus handle metadata."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.core.functions import Autoscaling, FunctionDef
from kiln.errors import NotFound
from kiln.frontends.modal.dispatch import CallContext
from kiln.frontends.modal.registry import ModalFunction, Registry
from kiln.ids import new_id

_GENERATOR = api_pb2.Function.FUNCTION_TYPE_GENERATOR


class FunctionHandlers:
    def __init__(self, core: Core, registry: Registry) -> None:
        self.core = core
        self.registry = registry

    async def FunctionPrecreate(
        self, req: api_pb2.FunctionPrecreateRequest, ctx: CallContext
    ) -> api_pb2.FunctionPrecreateResponse:
        function_id = req.existing_function_id or new_id("fu")
        handle = api_pb2.FunctionHandleMetadata(
            function_name=req.function_name,
            function_type=req.function_type,
            function_schema=req.function_schema,
            supported_input_formats=req.supported_input_formats,
            supported_output_formats=req.supported_output_formats,
            app_id=req.app_id,
        )
        for method_name, definition in req.method_definitions.items():
            handle.method_handle_metadata[method_name].CopyFrom(
                _method_handle(req.function_name, method_name, definition)
            )
        self.registry.functions[function_id] = ModalFunction(
            function_id, req.app_id, req.function_name, handle
        )
        return api_pb2.FunctionPrecreateResponse(function_id=function_id, handle_metadata=handle)

    async def FunctionCreate(
        self, req: api_pb2.FunctionCreateRequest, ctx: CallContext
    ) -> api_pb2.FunctionCreateResponse:
        if req.HasField("function_data"):
            ranked = sorted(req.function_data.ranked_functions, key=lambda r: r.rank)
            function = api_pb2.Function()
            function.CopyFrom(ranked[0].function)
        else:
            function = api_pb2.Function()
            function.CopyFrom(req.function)
        function_id = req.existing_function_id or new_id("fu")
        known = self.registry.functions.get(function_id)
        handle = known.handle if known is not None else api_pb2.FunctionHandleMetadata()
        handle.function_name = function.function_name
        handle.function_type = function.function_type
        handle.app_id = req.app_id
        handle.class_parameter_info.CopyFrom(function.class_parameter_info)
        handle.function_schema.CopyFrom(function.function_schema)
        del handle.supported_input_formats[:]
        handle.supported_input_formats.extend(function.supported_input_formats)
        del handle.supported_output_formats[:]
        handle.supported_output_formats.extend(function.supported_output_formats)
        for method_name, definition in function.method_definitions.items():
            handle.method_handle_metadata[method_name].CopyFrom(
                _method_handle(function.function_name, method_name, definition)
            )
        self.registry.functions[function_id] = ModalFunction(
            function_id, req.app_id, function.function_name, handle, function
        )
        self.core.register_function(to_core(function_id, req.app_id, function))
        return api_pb2.FunctionCreateResponse(
            function_id=function_id,
            function=function,
            handle_metadata=handle,
            function_data=_function_data(function),
        )

    async def ClassCreate(
        self, req: api_pb2.ClassCreateRequest, ctx: CallContext
    ) -> api_pb2.ClassCreateResponse:
        class_id = req.existing_class_id or new_id("cs")
        metadata = api_pb2.ClassHandleMetadata()
        self.registry.classes[class_id] = (req.app_id, metadata)
        return api_pb2.ClassCreateResponse(class_id=class_id, handle_metadata=metadata)

    async def FunctionGetCurrentStats(
        self, req: api_pb2.FunctionGetCurrentStatsRequest, ctx: CallContext
    ) -> api_pb2.FunctionStats:
        pool = self.core.scheduler.pools.get(req.function_id)
        if pool is None:
            raise NotFound(f"Function {req.function_id} is not running on this kiln server")
        load = pool.load()
        return api_pb2.FunctionStats(
            backlog=load.queued, num_total_tasks=load.containers, num_running_inputs=load.running
        )


def _method_handle(
    class_tag: str, method_name: str, definition: api_pb2.MethodDefinition
) -> api_pb2.FunctionHandleMetadata:
    class_name = class_tag.split(".")[0]
    return api_pb2.FunctionHandleMetadata(
        function_name=f"{class_name}.{method_name}",
        function_type=definition.function_type,
        use_method_name=method_name,
        is_method=True,
        web_url=definition.web_url,
        function_schema=definition.function_schema,
        supported_input_formats=definition.supported_input_formats,
        supported_output_formats=definition.supported_output_formats,
    )


def _function_data(function: api_pb2.Function) -> api_pb2.FunctionData:
    """FunctionData mirrors Function's fields of the same name; the client needs one ranked entry."""
    data = api_pb2.FunctionData()
    for field in api_pb2.FunctionData.DESCRIPTOR.fields:
        source = api_pb2.Function.DESCRIPTOR.fields_by_name.get(field.name)
        if source is None or source.type != field.type or source.is_repeated != field.is_repeated:
            continue
        if field.message_type is not None and (
            source.message_type is None or source.message_type.full_name != field.message_type.full_name
        ):
            continue
        value = getattr(function, field.name)
        target = getattr(data, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if hasattr(item, "CopyFrom"):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            if function.HasField(field.name):  # type: ignore[arg-type]
                target.CopyFrom(value)
        else:
            setattr(data, field.name, value)
    data.ranked_functions.append(api_pb2.FunctionData.RankedFunction(rank=0, function=function))
    return data


def to_core(function_id: str, app_id: str, function: api_pb2.Function) -> FunctionDef:
    """The scheduling-relevant part of a Modal Function definition."""
    settings = function.autoscaler_settings
    max_inputs = function.max_concurrent_inputs or 1
    target_inputs = function.target_concurrent_inputs or max_inputs
    max_containers = settings.max_containers if settings.HasField("max_containers") else None
    if max_containers is None and function.concurrency_limit:
        max_containers = function.concurrency_limit
    return FunctionDef(
        function_id=function_id,
        app_id=app_id,
        tag=function.function_name,
        image_id=function.image_id,
        mount_ids=list(function.mount_ids),
        secret_ids=list(function.secret_ids),
        timeout=float(function.timeout_secs or 300),
        max_inputs=max_inputs,
        target_inputs=target_inputs,
        batch_max_size=function.batch_max_size,
        is_generator=function.function_type == _GENERATOR,
        single_use=function.single_use_containers,
        autoscaling=Autoscaling(
            min_containers=settings.min_containers
            if settings.HasField("min_containers")
            else function.warm_pool_size,
            max_containers=max_containers or None,
            buffer_containers=settings.buffer_containers if settings.HasField("buffer_containers") else 0,
            scaledown_window=float(settings.scaledown_window or function.task_idle_timeout_secs or 60),
        ),
        definition=function.SerializeToString(),
        needs_client_deps=function.mount_client_dependencies,
    )
