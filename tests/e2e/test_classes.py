"""Classes through the official client: parameters, lifecycle hooks, variants and lookups."""

from __future__ import annotations

import importlib
import re
import time
from types import ModuleType

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e

APP = "kiln-test-classes"


@pytest.fixture
def classes_app(modal_client: None) -> ModuleType:
    return importlib.import_module("classes_app")


def flat(text: str) -> str:
    """The client's rich output wraps long lines; compare with whitespace collapsed."""
    return " ".join(text.split())


@pytest.mark.timeout(120)
def test_parameters_of_each_type_with_defaults(classes_app: ModuleType) -> None:
    with classes_app.app.run():
        defaults = classes_app.Params(name="a").describe.remote()
        assert defaults == {
            "name": "a",
            "count": 3,
            "flag": False,
            "blob": b"\x00kiln",
            "types": ["str", "int", "bool", "bytes"],
        }
        given = classes_app.Params(name="é", count=-7, flag=True, blob=b"\xff\x00").describe.remote()
        assert given == {
            "name": "é",
            "count": -7,
            "flag": True,
            "blob": b"\xff\x00",
            "types": ["str", "int", "bool", "bytes"],
        }


@pytest.mark.timeout(120)
def test_each_parameter_set_gets_its_own_containers_and_enter_runs_once(classes_app: ModuleType) -> None:
    Params = classes_app.Params
    with classes_app.app.run():
        first = [Params(name="a").identity.remote() for _ in range(3)]
        container = first[0][0]
        assert first == [(container, 1, ["snap", "enter"])] * 3, "@enter must run once, before inputs"

        assert Params(name="b").identity.remote()[0] != container
        # Defaults are part of the instance: spelling them out names the same one.
        assert Params(name="a", count=3, flag=False).identity.remote()[0] == container
        # So is the order of keyword arguments irrelevant.
        one = Params(name="c", count=2, flag=True).identity.remote()[0]
        assert Params(flag=True, count=2, name="c").identity.remote()[0] == one


@pytest.mark.timeout(120)
def test_unparameterized_class_reuses_its_container(classes_app: ModuleType) -> None:
    with classes_app.app.run():
        first = classes_app.Plain().identity.remote()
        assert classes_app.Plain().identity.remote() == first
        assert first[1] == 1


@pytest.mark.timeout(120)
def test_with_options_are_merged_into_the_variant(classes_app: ModuleType) -> None:
    Plain = classes_app.Plain
    with classes_app.app.run():
        base = Plain().config.remote()
        configured = Plain.with_options(
            timeout=33, retries=2, max_containers=1, scaledown_window=5, memory=(100, 200)
        ).with_options(cpu=0.5)  # options stack
        config = configured().config.remote()
        assert config["function_id"] != base["function_id"]
        assert config == {
            **base,
            "function_id": config["function_id"],
            "timeout_secs": 33,
            "retries": 2,
            "max_containers": 1,
            "scaledown_window": 5,
            "milli_cpu": 500,
            "memory_mb": 100,
            "memory_mb_max": 200,
        }
        # The base function is untouched by its variants.
        assert Plain().config.remote() == base


@pytest.mark.timeout(120)
def test_variants_enforce_their_options(classes_app: ModuleType) -> None:
    import modal

    Plain = classes_app.Plain
    with classes_app.app.run():
        with pytest.raises(modal.exception.FunctionTimeoutError):
            Plain.with_options(timeout=2)().slow.remote(30)
        assert Plain.with_options(env={"KILN_OPTION": "on"})().env.remote("KILN_OPTION") == "on"
        assert Plain().env.remote("KILN_OPTION") is None


@pytest.mark.timeout(120)
def test_plain_functions_have_variants_too(classes_app: ModuleType) -> None:
    double = classes_app.double
    with classes_app.app.run():
        assert double.with_options(timeout=30).remote(4) == 8
        assert list(double.with_concurrency(max_inputs=3).map([1, 2, 3])) == [2, 4, 6]


@pytest.mark.timeout(120)
def test_bound_ids_are_deterministic(classes_app: ModuleType) -> None:
    import modal

    with classes_app.app.run():
        local = classes_app.Plain.with_options(timeout=44)().config.remote()["function_id"]
        # A looked-up class has its own handle, so the client's bind cache cannot answer for it.
        looked_up = modal.Cls.from_name(APP, "Plain").with_options(timeout=44)
        assert looked_up().config.remote()["function_id"] == local

        container = classes_app.Params(name="same").identity.remote()[0]
        again = modal.Cls.from_name(APP, "Params")(name="same").identity.remote()[0]
        assert again == container, "the same parameters must reach the same variant and its containers"


@pytest.mark.timeout(120)
def test_with_concurrency_runs_inputs_together(classes_app: ModuleType) -> None:
    with classes_app.app.run():
        concurrent = classes_app.Plain.with_concurrency(max_inputs=4)()
        assert concurrent.config.remote()["max_concurrent_inputs"] == 4
        start = time.monotonic()
        containers = list(concurrent.slow.map([2.0] * 4))
        elapsed = time.monotonic() - start
        assert len(set(containers)) == 1, "four inputs fit one container with max_inputs=4"
        assert elapsed < 6.0, f"4 inputs of 2 s took {elapsed:.1f} s: they did not run concurrently"


@pytest.mark.timeout(120)
def test_with_options_max_containers_caps_the_variant(classes_app: ModuleType) -> None:
    with classes_app.app.run():
        capped = classes_app.Plain.with_options(max_containers=1)()
        assert len(set(capped.slow.map([0.5] * 3))) == 1


@pytest.mark.timeout(120)
def test_with_batching_overrides_the_batch_size(classes_app: ModuleType) -> None:
    Batcher = classes_app.Batcher
    with classes_app.app.run():
        assert max(Batcher().sizes.map(range(4))) <= 2
        bigger = Batcher.with_batching(max_batch_size=4, wait_ms=2000)()
        assert list(bigger.sizes.map(range(4))) == [4, 4, 4, 4]


@pytest.mark.timeout(120)
def test_lookups_in_a_running_app(classes_app: ModuleType) -> None:
    import modal

    with classes_app.app.run():
        Params = modal.Cls.from_name(APP, "Params")
        assert Params(name="z", flag=True).describe.remote()["flag"] is True
        assert modal.Function.from_name(APP, "double").remote(21) == 42

        with pytest.raises(modal.exception.NotFoundError, match=r"is a class: use modal\.Cls\.from_name"):
            modal.Function.from_name(APP, "Params").remote()
        with pytest.raises(modal.exception.NotFoundError, match=r"has no function 'nope' \(it has: double\)"):
            modal.Function.from_name(APP, "nope").remote()
        with pytest.raises(
            modal.exception.NotFoundError, match=r"has no class 'Nope' \(it has: Batcher, Params, Plain\)"
        ):
            modal.Cls.from_name(APP, "Nope")().anything.remote()
        with pytest.raises(modal.exception.NotFoundError, match="No app named 'kiln-test-no-such-app'"):
            modal.Function.from_name("kiln-test-no-such-app", "double").remote()


@pytest.mark.timeout(300)
def test_lookups_in_a_deployed_app(kiln: KilnServer, modal_client: None) -> None:
    import modal

    name = "kiln-test-classes-deployed"
    deployed = run_modal(kiln, "deploy", "--name", name, "classes_app.py")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        Params = modal.Cls.from_name(name, "Params")
        assert Params(name="d").describe.remote()["name"] == "d"
        assert Params.with_options(timeout=20)(name="d").describe.remote()["count"] == 3
        assert modal.Function.from_name(name, "double").remote(4) == 8
    finally:
        stopped = run_modal(kiln, "app", "stop", "-y", name)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with pytest.raises(modal.exception.NotFoundError, match=f"No app named '{name}'"):
        modal.Function.from_name(name, "double").remote(4)


@pytest.mark.timeout(180)
def test_exit_runs_when_an_idle_container_scales_down(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "classes_app.py::exit_on_scaledown")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    first = re.search(r"kiln-first (\w+)", output)
    second = re.search(r"kiln-second (\w+)", output)
    assert first and second, output
    assert first.group(1) != second.group(1), "the idle container should have been scaled down"
    assert f"kiln-exit {first.group(1)}" in output, output


@pytest.mark.timeout(180)
def test_exit_runs_when_the_app_stops(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "classes_app.py::exit_on_stop")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    container = re.search(r"kiln-container (\w+)", output)
    assert container, output
    assert f"kiln-exit {container.group(1)}" in output, output


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("app_file", "message"),
    [
        ("bad_cls_init.py", "WithInit cannot have a custom constructor (__init__) method"),
        ("bad_cls_float.py", "Class parameter 'ratio': float is not a supported modal.parameter() type"),
    ],
)
def test_bad_classes_are_refused_clearly(kiln: KilnServer, app_file: str, message: str) -> None:
    result = run_modal(kiln, "run", app_file)
    assert result.returncode != 0
    assert message in flat(result.stdout + result.stderr)
    assert kiln.process.poll() is None


@pytest.mark.timeout(120)
def test_bad_options_are_refused_clearly(classes_app: ModuleType) -> None:
    import modal

    Plain = classes_app.Plain
    with classes_app.app.run():
        with pytest.raises(TypeError, match="unexpected keyword argument 'gpus'"):
            Plain.with_options(gpus=1)
        with pytest.raises(ValueError, match="out of range"):
            Plain.with_options(max_containers=-1)().identity.remote()
        with pytest.raises(modal.exception.InvalidError, match="CPU limit lower than request"):
            Plain.with_options(cpu=(2, 1))
        with pytest.raises(modal.exception.InvalidError, match="cannot be greater than `max_inputs`"):
            Plain.with_concurrency(max_inputs=2, target_inputs=5)
        with pytest.raises(modal.exception.InvalidError, match="max_batch_size cannot be greater than 1000"):
            classes_app.Batcher.with_batching(max_batch_size=2000, wait_ms=10)
        # The client lets this one through; the server refuses it.
        with pytest.raises(modal.exception.InvalidError, match="scaledown_window must be between 2 and 3600"):
            Plain.with_options(scaledown_window=1)().identity.remote()
        with pytest.raises(TypeError, match="Expected str, got float"):
            classes_app.Params(name=1.5).describe.remote()
        with pytest.raises(modal.exception.InvalidError, match="Missing required parameter: name"):
            classes_app.Params().describe.remote()
        # None of it hurt the server.
        assert classes_app.Plain().identity.remote()[1] == 1
