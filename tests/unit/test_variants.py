"""Function variants: deterministic IDs, option merging and validation, as pure functions."""

from __future__ import annotations

import pytest
from modal_proto import api_pb2

from kiln.errors import InvalidRequest
from kiln.frontends.modal.functions import to_core
from kiln.frontends.modal.variants import check_options, merge_options, variant_id

_PROTO = api_pb2.ClassParameterInfo.PARAM_SERIALIZATION_FORMAT_PROTO
_STRING = api_pb2.PARAM_TYPE_STRING
_INT = api_pb2.PARAM_TYPE_INT


def service_function() -> api_pb2.Function:
    return api_pb2.Function(
        function_name="Model.*",
        is_class=True,
        timeout_secs=300,
        secret_ids=["st-base"],
        resources=api_pb2.Resources(milli_cpu=1000, memory_mb=512),
        autoscaler_settings=api_pb2.AutoscalerSettings(max_containers=4),
        class_parameter_info=api_pb2.ClassParameterInfo(
            format=_PROTO,
            schema=[
                api_pb2.ClassParameterSpec(name="name", type=_STRING),
                api_pb2.ClassParameterSpec(name="size", type=_INT, has_default=True, int_default=1),
            ],
        ),
    )


def params(*values: tuple[str, str | int]) -> bytes:
    parameters = [
        api_pb2.ClassParameterValue(name=n, type=_STRING, string_value=v)
        if isinstance(v, str)
        else api_pb2.ClassParameterValue(name=n, type=_INT, int_value=v)
        for n, v in values
    ]
    return api_pb2.ClassParameterSet(parameters=parameters).SerializeToString(deterministic=True)


def test_same_definition_same_id() -> None:
    fn = service_function()
    options = api_pb2.FunctionOptions(timeout_secs=10)
    first = variant_id("fu-base", fn, params(("name", "a")), options)
    assert first == variant_id("fu-base", fn, params(("name", "a")), api_pb2.FunctionOptions(timeout_secs=10))
    assert first.startswith("fu-") and len(first) == 25


def test_parameter_order_does_not_matter() -> None:
    fn = service_function()
    assert variant_id("fu-base", fn, params(("name", "a"), ("size", 2)), None) == variant_id(
        "fu-base", fn, params(("size", 2), ("name", "a")), None
    )


@pytest.mark.parametrize(
    ("function_id", "values", "options"),
    [
        ("fu-other", (("name", "a"),), None),
        ("fu-base", (("name", "b"),), None),
        ("fu-base", (("name", "a"), ("size", 2)), None),
        ("fu-base", (("name", "a"),), api_pb2.FunctionOptions(timeout_secs=10)),
    ],
)
def test_anything_that_defines_a_variant_changes_its_id(
    function_id: str, values: tuple[tuple[str, str | int], ...], options: api_pb2.FunctionOptions | None
) -> None:
    fn = service_function()
    assert variant_id(function_id, fn, params(*values), options) != variant_id(
        "fu-base", fn, params(("name", "a")), None
    )


def test_unknown_and_garbled_parameters_are_refused() -> None:
    fn = service_function()
    with pytest.raises(
        InvalidRequest,
        match=r"Model has no parameter colour; its modal\.parameter\(\) fields are: name, size",
    ):
        variant_id("fu-base", fn, params(("name", "a"), ("colour", "red")), None)
    with pytest.raises(InvalidRequest, match="not a valid ClassParameterSet"):
        variant_id("fu-base", fn, b"\xff\xff\xff", None)


def test_merge_replaces_only_what_the_options_set() -> None:
    fn = service_function()
    options = api_pb2.FunctionOptions(
        timeout_secs=20,
        concurrency_limit=1,
        task_idle_timeout_secs=5,
        max_concurrent_inputs=8,
        batch_max_size=4,
        batch_linger_ms=50,
        retry_policy=api_pb2.FunctionRetryPolicy(retries=3, backoff_coefficient=1.0),
        resources=api_pb2.Resources(gpu_config=api_pb2.GPUConfig(gpu_type="H100", count=1)),
    )
    merged = merge_options(fn, options)
    assert merged.timeout_secs == 20
    assert merged.autoscaler_settings.max_containers == merged.concurrency_limit == 1
    assert merged.autoscaler_settings.scaledown_window == merged.task_idle_timeout_secs == 5
    assert (merged.max_concurrent_inputs, merged.batch_max_size, merged.batch_linger_ms) == (8, 4, 50)
    assert merged.retry_policy.retries == 3
    # Resources merge field by field: a GPU keeps the decorator's CPU and memory.
    assert (merged.resources.milli_cpu, merged.resources.memory_mb) == (1000, 512)
    assert merged.resources.gpu_config.gpu_type == "H100"
    assert list(merged.secret_ids) == ["st-base"]
    assert fn.timeout_secs == 300, "the base definition is not modified"


def test_merged_options_reach_the_core_definition() -> None:
    options = api_pb2.FunctionOptions(
        concurrency_limit=2,
        task_idle_timeout_secs=7,
        max_concurrent_inputs=3,
        resources=api_pb2.Resources(milli_cpu=2000, milli_cpu_max=3000, memory_mb_max=1024),
    )
    definition = to_core("fu-v", "ap-x", merge_options(service_function(), options))
    assert definition.autoscaling.max_containers == 2
    assert definition.autoscaling.scaledown_window == 7
    assert (definition.max_inputs, definition.target_inputs) == (3, 3)
    resources = definition.resources
    assert (resources.milli_cpu, resources.milli_cpu_max) == (2000, 3000)
    assert (resources.memory_mb, resources.memory_mb_max) == (512, 1024)


def test_secrets_are_replaced_when_asked() -> None:
    options = api_pb2.FunctionOptions(secret_ids=["st-new"], replace_secret_ids=True)
    assert list(merge_options(service_function(), options).secret_ids) == ["st-new"]


def test_a_new_request_drops_an_older_smaller_limit() -> None:
    fn = service_function()
    fn.resources.milli_cpu_max = 1500
    merged = merge_options(fn, api_pb2.FunctionOptions(resources=api_pb2.Resources(milli_cpu=2000)))
    assert (merged.resources.milli_cpu, merged.resources.milli_cpu_max) == (2000, 0)


def test_a_lower_max_inputs_resets_a_larger_target() -> None:
    fn = service_function()
    fn.max_concurrent_inputs, fn.target_concurrent_inputs = 10, 8
    merged = merge_options(fn, api_pb2.FunctionOptions(max_concurrent_inputs=4))
    assert (merged.max_concurrent_inputs, merged.target_concurrent_inputs) == (4, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (api_pb2.FunctionOptions(task_idle_timeout_secs=1), "scaledown_window must be between 2 and 3600"),
        (api_pb2.FunctionOptions(timeout_secs=0), "timeout must be at least 1 second"),
        (api_pb2.FunctionOptions(batch_max_size=1001), "max_batch_size must be between 1 and 1000"),
        (api_pb2.FunctionOptions(max_concurrent_inputs=0), "max_inputs must be at least 1"),
        (
            api_pb2.FunctionOptions(max_concurrent_inputs=2, target_concurrent_inputs=3),
            "target_inputs cannot be larger than max_inputs",
        ),
        (
            api_pb2.FunctionOptions(resources=api_pb2.Resources(milli_cpu=2000, milli_cpu_max=1000)),
            "CPU limit is below the CPU request",
        ),
        (
            api_pb2.FunctionOptions(resources=api_pb2.Resources(memory_mb=200, memory_mb_max=100)),
            "memory limit is below the memory request",
        ),
    ],
)
def test_impossible_options_are_refused(options: api_pb2.FunctionOptions, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_options(options)


def test_ordinary_options_pass() -> None:
    check_options(api_pb2.FunctionOptions(timeout_secs=5, task_idle_timeout_secs=2, batch_max_size=1000))
