"""`modal run` from the command line: entrypoints, arguments, modules, container output, caching."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_local_entrypoint_with_cli_args(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "cli_app.py", "--n", "3")
    assert result.returncode == 0, _output(result)
    assert "cli triples: [0, 3, 6]" in result.stdout


@pytest.mark.timeout(120)
def test_single_function_with_cli_args(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "cli_app.py::greet", "--name", "kiln", "--times", "2")
    assert result.returncode == 0, _output(result)
    assert "greet: hello-kiln hello-kiln" in result.stdout


@pytest.mark.timeout(120)
def test_run_module_in_a_package(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "-m", "kiln_pkg.entry", "--n", "3")
    assert result.returncode == 0, _output(result)
    assert "pkg result: pkg-values:0,1,2" in result.stdout


@pytest.mark.timeout(120)
def test_container_stdout_and_stderr_appear_in_modal_run_output(kiln: KilnServer) -> None:
    tag = uuid.uuid4().hex[:8]
    result = run_modal(kiln, "run", "cli_app.py::chatter", "--tag", tag)
    assert result.returncode == 0, _output(result)
    # The client shows both streams of the container on its console (stderr in red).
    assert f"KILN-STDOUT-{tag}" in _output(result)
    assert f"KILN-STDERR-{tag}" in _output(result)


@pytest.mark.timeout(300)
def test_second_run_of_the_same_app_builds_nothing(kiln: KilnServer) -> None:
    # A fresh nonce gives the image a layer no earlier session built: the first run must build it.
    env = {"KILN_TEST_NONCE": uuid.uuid4().hex}
    first = run_modal(kiln, "run", "nobuild_app.py", env=env)
    assert first.returncode == 0, _output(first)
    assert "result: nobuild-hello" in first.stdout
    assert "=> Step" in _output(first), "the first run should have built the new layer:\n" + _output(first)

    second = run_modal(kiln, "run", "nobuild_app.py", env=env)
    assert second.returncode == 0, _output(second)
    assert "result: nobuild-hello" in second.stdout
    assert "=> Step" not in _output(second), _output(second)
