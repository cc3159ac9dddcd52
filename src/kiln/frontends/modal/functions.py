"""Function and class creation: Modal definitions → core FunctionDefs plus handle metadata."""

from __future__ import annotations

from modal_proto import api_pb2

from kiln.core.apps import App
from kiln.core.core import Core
from kiln.core.functions import Autoscaling, FunctionDef, Resources
from kiln.core.schedules import Period, Schedule
from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.modal.calls import retry_policy_from_proto
from kiln.frontends.modal.dispatch import CallContext
from kiln.frontends.modal.registry import ModalFunction, Registry, encode_meta
from kiln.frontends.modal.variants import check_options, merge_options, variant_id
from kiln.frontends.modal.volumes import check_mounts
from kiln.frontends.modal.web import expose_web_endpoints
from kiln.gateway.endpoints import Endpoints
from kiln.ids import new_id

UNBOUNDED_REQUESTS = 2**31  # a server's requests per container when nothing limits them


class FunctionHandlers:
    def __init__(self, core: Core, registry: Registry, endpoints: Endpoints) -> None:
        self.core = core
        self.registry = registry
        self.endpoints = endpoints

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
            # `gpu=["h100", "a100"]`: the first choice this machine can serve, else the first
            # (whose GPU request register_function then explains or falls back from).
            ranked = [r.function for r in sorted(req.function_data.ranked_functions, key=lambda r: r.rank)]
            if not ranked:
                raise InvalidRequest("FunctionCreate: function_data has no ranked_functions")
            servable = (f for f in ranked if self.core.gpu_servable(resources_of(f.resources)))
            function = api_pb2.Function()
            function.CopyFrom(next(servable, ranked[0]))
        else:
            function = api_pb2.Function()
            function.CopyFrom(req.function)
        check_mounts(self.core, function)
        function_id = req.existing_function_id or new_id("fu")
        expose_web_endpoints(self.core, self.endpoints, req.app_id, function_id, function)
        known = self.registry.functions.get(function_id)
        handle = known.handle if known is not None else api_pb2.FunctionHandleMetadata()
        handle.function_name = function.function_name
        handle.web_url = function.web_url
        del handle._experimental_flash_urls[:]
        handle._experimental_flash_urls.extend(function.flash_service_urls)
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
        registered = ModalFunction(function_id, req.app_id, function.function_name, handle, function)
        self.core.register_function(to_core(function_id, req.app_id, function), encode_meta(registered))
        self.registry.functions[function_id] = registered
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
        self.core.register_class(class_id, req.app_id, metadata.SerializeToString())
        self.registry.classes[class_id] = (req.app_id, metadata)
        return api_pb2.ClassCreateResponse(class_id=class_id, handle_metadata=metadata)

    async def FunctionBindParams(
        self, req: api_pb2.FunctionBindParamsRequest, ctx: CallContext
    ) -> api_pb2.FunctionBindParamsResponse:
        """A class instance or a `with_options` configuration: a variant with its own pool."""
        base = self.registry.functions.get(req.function_id)
        if base is None or base.function is None:
            raise NotFound(f"Function {req.function_id} is not defined on this kiln server")
        if not self.core.app(base.app_id).running:
            raise InvalidRequest(f"The app of {base.tag} has stopped; run it again to call its functions")
        options = req.function_options if req.HasField("function_options") else None
        if options is not None:
            check_options(options)
            check_mounts(self.core, options)
        bound_id = variant_id(base.function_id, base.function, req.serialized_params, options)
        function = merge_options(base.function, options) if options is not None else base.function
        handle = api_pb2.FunctionHandleMetadata()
        handle.CopyFrom(base.handle)
        handle.base_function_id = base.function_id
        # Rebuilt on every bind: a redeployed base function gives its variants the new definition.
        bound = ModalFunction(bound_id, base.app_id, base.tag, handle, function, req.serialized_params)
        self.core.register_function(to_core(bound_id, base.app_id, function), encode_meta(bound))
        self.registry.functions[bound_id] = bound
        return api_pb2.FunctionBindParamsResponse(bound_function_id=bound_id, handle_metadata=handle)

    async def FunctionGet(
        self, req: api_pb2.FunctionGetRequest, ctx: CallContext
    ) -> api_pb2.FunctionGetResponse:
        app = self._app_named(req.app_name, req.environment_name)
        function_id = app.function_ids.get(req.object_tag)
        known = self.registry.functions.get(function_id) if function_id else None
        if known is None or known.function is None:
            if req.object_tag in app.class_ids:
                raise NotFound(
                    f"'{req.object_tag}' in app '{req.app_name}' is a class: use "
                    f"modal.Cls.from_name({req.app_name!r}, {req.object_tag!r})"
                )
            functions = sorted(tag for tag in app.function_ids if not tag.endswith(".*"))
            raise NotFound(
                f"App '{req.app_name}' has no function '{req.object_tag}' (it has: "
                f"{', '.join(functions) or 'none'})"
            )
        return api_pb2.FunctionGetResponse(
            function_id=known.function_id,
            handle_metadata=known.handle,
            function=_function_data(known.function),
        )

    async def ClassGet(self, req: api_pb2.ClassGetRequest, ctx: CallContext) -> api_pb2.ClassGetResponse:
        app = self._app_named(req.app_name, req.environment_name)
        class_id = app.class_ids.get(req.object_tag)
        if class_id is None:
            raise NotFound(
                f"App '{req.app_name}' has no class '{req.object_tag}' (it has: "
                f"{', '.join(sorted(app.class_ids)) or 'none'})"
            )
        metadata = api_pb2.ClassHandleMetadata()
        service = self.registry.functions.get(app.function_ids.get(f"{req.object_tag}.*", ""))
        if service is not None:
            metadata.class_function_id = service.function_id
            metadata.class_function_metadata.CopyFrom(service.handle)
        return api_pb2.ClassGetResponse(class_id=class_id, handle_metadata=metadata)

    def _app_named(self, name: str, environment: str) -> App:
        """A deployed app of that name, else the newest running app started under that name."""
        app = self.core.running_app_named(name, environment)
        if app is None:
            raise NotFound(
                f"No app named '{name}' is deployed or running on this kiln server; "
                f"deploy it with `modal deploy` (or start it with `modal run`) first"
            )
        return app

    async def FunctionGetCurrentStats(
        self, req: api_pb2.FunctionGetCurrentStatsRequest, ctx: CallContext
    ) -> api_pb2.FunctionStats:
        queued, running, containers = self.core.function_load(req.function_id)
        return api_pb2.FunctionStats(backlog=queued, num_total_tasks=containers, num_running_inputs=running)


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
    if function.is_server:
        # A server takes any number of requests unless max_concurrency caps them. Without a
        # target_concurrency (or with 0, "no autoscaling") one container serves all the load,
        # as a server that handles its own concurrency expects; more start only past the cap.
        max_inputs = function.max_concurrent_inputs
        target_inputs = function.target_concurrent_inputs or max_inputs or UNBOUNDED_REQUESTS
    max_containers = settings.max_containers if settings.HasField("max_containers") else None
    if max_containers is None and function.concurrency_limit:
        max_containers = function.concurrency_limit
    timeout = float(function.timeout_secs or 300)
    return FunctionDef(
        function_id=function_id,
        app_id=app_id,
        tag=function.function_name,
        image_id=function.image_id,
        mount_ids=list(function.mount_ids),
        secret_ids=list(function.secret_ids),
        timeout=timeout,
        startup_timeout=float(function.startup_timeout_secs or timeout),
        max_inputs=max_inputs,
        target_inputs=target_inputs,
        batch_max_size=function.batch_max_size,
        batch_linger_ms=function.batch_linger_ms,
        retry=retry_policy_from_proto(function.retry_policy),
        single_use=function.single_use_containers,
        autoscaling=Autoscaling(
            min_containers=settings.min_containers
            if settings.HasField("min_containers")
            else function.warm_pool_size,
            max_containers=max_containers or None,
            buffer_containers=settings.buffer_containers if settings.HasField("buffer_containers") else 0,
            scaledown_window=float(settings.scaledown_window or function.task_idle_timeout_secs or 60),
        ),
        resources=resources_of(function.resources),
        definition=function.SerializeToString(),
        schedule=_schedule(function.schedule) if function.HasField("schedule") else None,
        # A FunctionInput without args is a call with no arguments (the client's `((), {})`).
        scheduled_input=api_pb2.FunctionInput().SerializeToString(),
        http_port=function.http_config.port if function.is_server else 0,
    )


def _schedule(schedule: api_pb2.Schedule) -> Schedule | None:
    if schedule.HasField("cron"):
        return Schedule(cron=schedule.cron.cron_string, timezone=schedule.cron.timezone or "UTC")
    if schedule.HasField("period"):
        p = schedule.period
        return Schedule(
            period=Period(p.years, p.months, p.weeks, p.days, p.hours, p.minutes, float(p.seconds))
        )
    return None


def resources_of(resources: api_pb2.Resources) -> Resources:
    gpu = resources.gpu_config
    gpu_type = gpu.gpu_type or (api_pb2.GPUType.Name(gpu.type).removeprefix("GPU_TYPE_") if gpu.type else "")
    return Resources(
        milli_cpu=resources.milli_cpu,
        milli_cpu_max=resources.milli_cpu_max,
        memory_mb=resources.memory_mb,
        memory_mb_max=resources.memory_mb_max,
        gpu_type=gpu_type if gpu.count else "",
        gpu_count=gpu.count,
    )
