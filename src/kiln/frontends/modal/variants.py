"""Function variants: what `FunctionBindParams` binds to a function.

A class instance (`Model(name="a")`) and a `with_options` / `with_concurrency` / `with_batching`
configuration are each a variant of the class's service function: the same code with its own
parameters, its own merged definition and its own container pool. The client caches bound IDs,
so a variant's ID is derived from what defines it.
"""

from __future__ import annotations

import hashlib

from modal_proto import api_pb2

from kiln.errors import InvalidRequest
from kiln.ids import stable_id

_PROTO = api_pb2.ClassParameterInfo.PARAM_SERIALIZATION_FORMAT_PROTO
_MAX_BATCH_SIZE = 1000
_MAX_BATCH_LINGER_MS = 600_000


def variant_id(
    function_id: str,
    function: api_pb2.Function,
    serialized_params: bytes,
    options: api_pb2.FunctionOptions | None,
) -> str:
    """The same (function, parameters, options) always gives the same `fu-` ID."""
    digest = hashlib.sha256()
    for part in (
        function_id.encode(),
        canonical_params(function, serialized_params),
        options.SerializeToString(deterministic=True) if options is not None else b"",
    ):
        digest.update(hashlib.sha256(part).digest())
    return stable_id("fu", digest.hexdigest())


def canonical_params(function: api_pb2.Function, serialized_params: bytes) -> bytes:
    """Parameters in a form that does not depend on the order the caller passed them in.

    The client serializes keyword parameters in call order, so `M(a=1, b=2)` and `M(b=2, a=1)`
    differ byte for byte while naming the same instance.
    """
    if function.class_parameter_info.format != _PROTO:
        return serialized_params  # legacy pickled (args, kwargs): opaque
    try:
        params = api_pb2.ClassParameterSet.FromString(serialized_params)
    except Exception as exc:  # protobuf raises DecodeError, and others for some corruptions
        raise InvalidRequest(
            f"The parameters of this {function.function_name} instance are not a valid ClassParameterSet; "
            "construct the class with modal.parameter() keyword arguments"
        ) from exc
    _check_params(function, params)
    ordered = sorted(params.parameters, key=lambda p: p.name)
    return api_pb2.ClassParameterSet(parameters=ordered).SerializeToString(deterministic=True)


def _check_params(function: api_pb2.Function, params: api_pb2.ClassParameterSet) -> None:
    declared = {spec.name for spec in function.class_parameter_info.schema}
    given = [p.name for p in params.parameters]
    unknown = sorted(set(given) - declared)
    if unknown:
        raise InvalidRequest(
            f"{function.function_name.removesuffix('.*')} has no parameter {', '.join(unknown)}; "
            f"its modal.parameter() fields are: {', '.join(sorted(declared)) or 'none'}"
        )
    if len(set(given)) != len(given):
        raise InvalidRequest(f"A parameter of {function.function_name} is given twice")


def check_options(options: api_pb2.FunctionOptions) -> None:
    """Refuse options no function can run with (the client checks most of these itself)."""
    resources = options.resources
    if resources.milli_cpu_max and resources.milli_cpu_max < resources.milli_cpu:
        raise InvalidRequest(
            "The CPU limit is below the CPU request; pass cpu=(request, limit) with limit >= request"
        )
    if resources.memory_mb_max and resources.memory_mb_max < resources.memory_mb:
        raise InvalidRequest(
            "The memory limit is below the memory request; pass memory=(request, limit) with limit >= request"
        )
    if options.HasField("timeout_secs") and options.timeout_secs == 0:
        raise InvalidRequest("timeout must be at least 1 second")
    if options.HasField("task_idle_timeout_secs") and not 2 <= options.task_idle_timeout_secs <= 3600:
        raise InvalidRequest("scaledown_window must be between 2 and 3600 seconds")
    if options.HasField("batch_max_size") and not 1 <= options.batch_max_size <= _MAX_BATCH_SIZE:
        raise InvalidRequest(f"max_batch_size must be between 1 and {_MAX_BATCH_SIZE}")
    if options.HasField("batch_linger_ms") and not 0 <= options.batch_linger_ms <= _MAX_BATCH_LINGER_MS:
        raise InvalidRequest(f"wait_ms must be between 0 and {_MAX_BATCH_LINGER_MS}")
    if options.HasField("max_concurrent_inputs") and options.max_concurrent_inputs == 0:
        raise InvalidRequest("max_inputs must be at least 1")
    if (
        options.HasField("max_concurrent_inputs")
        and options.HasField("target_concurrent_inputs")
        and options.target_concurrent_inputs > options.max_concurrent_inputs
    ):
        raise InvalidRequest("target_inputs cannot be larger than max_inputs")


def merge_options(function: api_pb2.Function, options: api_pb2.FunctionOptions) -> api_pb2.Function:
    """The function's definition with `options` applied: what the variant's containers run."""
    merged = api_pb2.Function()
    merged.CopyFrom(function)
    if options.replace_secret_ids:
        del merged.secret_ids[:]
        merged.secret_ids.extend(options.secret_ids)
    merged.mount_ids.extend(m for m in options.mount_ids if m not in merged.mount_ids)
    if options.replace_volume_mounts:
        del merged.volume_mounts[:]
        merged.volume_mounts.extend(options.volume_mounts)
    if options.replace_cloud_bucket_mounts:
        del merged.cloud_bucket_mounts[:]
        merged.cloud_bucket_mounts.extend(options.cloud_bucket_mounts)
    if options.HasField("resources"):
        _merge_resources(merged.resources, options.resources)
    if options.HasField("retry_policy"):
        merged.retry_policy.CopyFrom(options.retry_policy)
    if options.HasField("timeout_secs"):
        merged.timeout_secs = options.timeout_secs
    _merge_autoscaling(merged, options)
    _merge_concurrency(merged, options)
    if options.HasField("batch_max_size"):
        merged.batch_max_size = options.batch_max_size
    if options.HasField("batch_linger_ms"):
        merged.batch_linger_ms = options.batch_linger_ms
    if options.HasField("scheduler_placement"):
        merged.scheduler_placement.CopyFrom(options.scheduler_placement)
    if options.HasField("cloud_provider_str"):
        merged.cloud_provider_str = options.cloud_provider_str
    if options.HasField("routing_region"):
        merged.routing_region = options.routing_region
    return merged


def _merge_resources(merged: api_pb2.Resources, options: api_pb2.Resources) -> None:
    # Field by field: `with_options(gpu=...)` keeps the decorator's cpu and memory.
    merged.MergeFrom(options)
    # A new request given alone replaces an older limit that it would exceed.
    if merged.milli_cpu_max < merged.milli_cpu:
        merged.milli_cpu_max = 0
    if merged.memory_mb_max < merged.memory_mb:
        merged.memory_mb_max = 0


def _merge_autoscaling(merged: api_pb2.Function, options: api_pb2.FunctionOptions) -> None:
    # Both the AutoscalerSettings and their legacy mirrors on Function: readers use either.
    settings = merged.autoscaler_settings
    if options.HasField("concurrency_limit"):
        settings.max_containers = merged.concurrency_limit = options.concurrency_limit
    if options.HasField("warm_pool_size"):
        settings.min_containers = merged.warm_pool_size = options.warm_pool_size
    if options.HasField("buffer_containers"):
        settings.buffer_containers = merged._experimental_buffer_containers = options.buffer_containers
    if options.HasField("task_idle_timeout_secs"):
        settings.scaledown_window = merged.task_idle_timeout_secs = options.task_idle_timeout_secs


def _merge_concurrency(merged: api_pb2.Function, options: api_pb2.FunctionOptions) -> None:
    if options.HasField("max_concurrent_inputs"):
        merged.max_concurrent_inputs = options.max_concurrent_inputs
        if not options.HasField("target_concurrent_inputs") and (
            merged.target_concurrent_inputs > merged.max_concurrent_inputs
        ):
            merged.target_concurrent_inputs = 0  # 0 = the new max; the old target would exceed it
    if options.HasField("target_concurrent_inputs"):
        merged.target_concurrent_inputs = options.target_concurrent_inputs
