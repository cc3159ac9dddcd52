"""Modal ⇄ core translations for scheduling: retry policies, timeouts, autoscaler overrides."""

from modal_proto import api_pb2

from kiln.core.functions import Autoscaling, RetryPolicy
from kiln.frontends.modal.calls import retry_policy_from_proto, retry_policy_to_proto
from kiln.frontends.modal.functions import to_core
from kiln.frontends.modal.scheduling import overrides_from, to_settings


def test_retry_policy_round_trip() -> None:
    proto = api_pb2.FunctionRetryPolicy(
        retries=3, backoff_coefficient=2.0, initial_delay_ms=1500, max_delay_ms=30_000
    )
    policy = retry_policy_from_proto(proto)
    assert policy == RetryPolicy(retries=3, backoff_coefficient=2.0, initial_delay=1.5, max_delay=30.0)
    assert retry_policy_to_proto(policy) == proto


def test_no_retry_policy_means_no_retries() -> None:
    assert retry_policy_from_proto(api_pb2.FunctionRetryPolicy()).retries == 0


def test_to_core_maps_timeouts_batching_and_retries() -> None:
    function = api_pb2.Function(
        function_name="f",
        timeout_secs=30,
        startup_timeout_secs=90,
        batch_max_size=8,
        batch_linger_ms=250,
        retry_policy=api_pb2.FunctionRetryPolicy(retries=2, backoff_coefficient=1.0, initial_delay_ms=1000),
    )
    definition = to_core("fu-x", "ap-x", function)
    assert (definition.timeout, definition.startup_timeout) == (30.0, 90.0)
    assert (definition.batch_max_size, definition.batch_linger_ms) == (8, 250)
    assert definition.retry.retries == 2 and definition.retry.delay(2) == 1.0


def test_to_core_defaults() -> None:
    definition = to_core("fu-x", "ap-x", api_pb2.Function(function_name="f"))
    assert (definition.timeout, definition.startup_timeout) == (300.0, 300.0)
    assert definition.retry.retries == 0
    definition = to_core("fu-x", "ap-x", api_pb2.Function(function_name="f", timeout_secs=20))
    assert definition.startup_timeout == 20.0  # the client sends startup_timeout_secs = timeout


def test_overrides_are_the_fields_the_request_sets() -> None:
    assert overrides_from(api_pb2.AutoscalerSettings()) == {}
    assert overrides_from(api_pb2.AutoscalerSettings(min_containers=0, scaledown_window=5)) == {
        "min_containers": 0,
        "scaledown_window": 5.0,
    }
    # max_containers=0 lifts the limit.
    assert overrides_from(api_pb2.AutoscalerSettings(max_containers=0)) == {"max_containers": None}
    assert overrides_from(api_pb2.AutoscalerSettings(max_containers=4, buffer_containers=1)) == {
        "max_containers": 4,
        "buffer_containers": 1,
    }


def test_settings_report_every_field() -> None:
    settings = to_settings(Autoscaling(min_containers=1, max_containers=None, scaledown_window=60))
    assert settings.HasField("min_containers") and settings.HasField("max_containers")
    assert (settings.min_containers, settings.max_containers, settings.scaledown_window) == (1, 0, 60)
