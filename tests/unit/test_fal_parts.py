"""The fal frontend's pure parts: environment keys and Dockerfiles, machine types, routes."""

from __future__ import annotations

import subprocess

import pytest

from kiln.errors import InvalidRequest, Unsupported
from kiln.frontends.fal.environments import AGENT_DIR, FalEnvironment
from kiln.frontends.fal.machines import resources
from kiln.frontends.fal.routes import FalRoutes
from kiln.frontends.modal.standard_images import debian_slim, uv_pip_install

CONFIG = {"requirements": ["six==1.16.0"], "resolver": "uv", "python_version": "3.11"}


def test_the_env_id_is_isolates_own_key_and_ignores_force() -> None:
    from isolate.backends.virtualenv import VirtualPythonEnvironment

    expected = VirtualPythonEnvironment.from_config(dict(CONFIG)).key
    env = FalEnvironment.from_definition("virtualenv", dict(CONFIG), force=True)
    assert env.env_id == expected
    assert (
        FalEnvironment.from_definition("virtualenv", {**CONFIG, "requirements": [["six==1.16.0"]]}).env_id
        == expected
    )


def test_a_layer_naming_a_secret_writes_it_to_a_file_never_to_argv() -> None:
    items = ["pkg==1", "--extra-index-url", "https://u:${TOKEN}@index.example/simple", 'odd$"`\\name']
    env = FalEnvironment.from_definition("virtualenv", {**CONFIG, "requirements": items})
    run = next(line for line in env.dockerfile() if "${TOKEN}" in line).removeprefix("RUN ")
    assert "TOKEN" in env.secret_names()
    shown = run.replace(
        '/.uv/uv pip install --python $(command -v python) --compile-bytecode -r "$f"', 'cat "$f"'
    )
    out = subprocess.run(["sh", "-c", shown], env={"TOKEN": "s3cret", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.splitlines() == [
        "pkg==1",
        "--extra-index-url https://u:s3cret@index.example/simple",
        'odd$"`\\name',
    ]


def test_plain_layers_are_written_as_modal_writes_uv_pip_install_on_debian_slim() -> None:
    # The layer keys follow the text: identical lines share layers with Modal images.
    env = FalEnvironment.from_definition(
        "virtualenv", {**CONFIG, "requirements": [["six==1.16.0", "idna"], ["--pre", "x @ https://h/x.whl"]]}
    )
    lines = env.dockerfile()
    assert lines[:6] == debian_slim("3.11")
    assert lines[6:8] == uv_pip_install(["idna", "six==1.16.0"])
    assert (
        lines[7]
        == "RUN /.uv/uv pip install --python $(command -v python) --compile-bytecode idna six==1.16.0"
    )
    assert lines[9] == (
        "RUN /.uv/uv pip install --python $(command -v python) --compile-bytecode --pre 'x @ https://h/x.whl'"
    )
    assert lines[-1].endswith(f"--target {AGENT_DIR} cloudpickle==3.1.1 'grpcio>=1.64,<2'")
    bare = FalEnvironment.from_definition("virtualenv", {**CONFIG, "requirements": []}).dockerfile()
    assert bare[-2] == uv_pip_install([])[0]  # uv is there for the agent's layer


def test_loopback_ports_named_by_requirements_are_the_only_ones_a_build_may_reach() -> None:
    items = ["a @ http://127.0.0.1:8123/a.whl", "--extra-index-url=http://x:y@localhost:9000/simple", "b"]
    env = FalEnvironment.from_definition("virtualenv", {**CONFIG, "requirements": items})
    assert env.loopback_ports() == [8123, 9000]
    assert not env.needs_git()


def test_unsupported_kinds_and_resolvers_are_refused_with_the_fix() -> None:
    with pytest.raises(Unsupported, match="requirements="):
        FalEnvironment.from_definition("conda", {})
    with pytest.raises(InvalidRequest, match="uv"):
        FalEnvironment.from_definition("virtualenv", {**CONFIG, "resolver": "pip"})


def test_machine_types_map_to_limits_and_gpus() -> None:
    assert resources([]).memory_mb == resources(["XS"]).memory_mb
    assert resources(["M"]).milli_cpu == 4000
    gpu = resources(["GPU-H100"], num_gpus=2)
    assert (gpu.gpu_type, gpu.gpu_count) == ("H100", 2)
    with pytest.raises(InvalidRequest, match="GPU-A100"):
        resources(["GPU-Z9"])
    with pytest.raises(InvalidRequest, match="XS"):
        resources(["HUGE"])


def test_routes_strip_the_app_prefix_and_give_urls_without_a_trailing_slash() -> None:
    routes = FalRoutes("https://127.0.0.1:1", "https://127.0.0.1:2")
    urls = routes.add("hello", "fu-1", public=True)
    assert (urls.run, urls.queue, urls.ws) == (
        "https://127.0.0.1:1/kiln/hello", "https://127.0.0.1:2/kiln/hello", "wss://127.0.0.1:1/kiln/hello"
    )  # fmt: skip
    found = routes.find("/kiln/hello/predict/x")
    assert found is not None and found[1] == "/predict/x"
    assert routes.find("/kiln/other") is None
    routes.remove("hello", "fu-other")  # another function's route is not this one's to remove
    assert routes.find("/kiln/hello") is not None


def test_a_fal_run_covers_a_deployed_apps_url_while_it_runs() -> None:
    routes = FalRoutes("https://127.0.0.1:1")
    routes.add("hello", "fu-deployed", public=False)
    routes.add("hello", "fu-run", public=True)
    found = routes.find("/kiln/hello")
    assert found is not None and found[0].function_id == "fu-run"
    routes.remove("hello", "fu-run")
    found = routes.find("/kiln/hello")
    assert found is not None and found[0].function_id == "fu-deployed"
