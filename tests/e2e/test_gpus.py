"""GPU requests on a machine without a matching GPU: a clear refusal, or the explicit CPU fallback.

(Placement on real GPUs — devices exposed, CUDA_VISIBLE_DEVICES — is decided by pure functions
tested in tests/unit/test_gpus.py; no GPU is attached to the machines these tests run on.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.core.gpus import detect_gpus
from tests.conftest import TEST_HOME, KilnServer, run_modal, start_server, stop_server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(detect_gpus()), reason="this machine has a GPU: the refusal cases do not apply"),
]


def test_gpu_function_without_a_gpu_is_refused_with_the_fix(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "gpu_app.py::main", env={"GPU_REQUEST": "h100:2"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "H100:2" in output and "KILN_GPU_FALLBACK=cpu" in output, output
    # The server keeps serving.
    assert run_modal(kiln, "run", "basics.py::echo", "--x", "2").returncode == 0


def test_an_app_that_declares_a_gpu_function_it_never_calls_runs(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "gpu_app.py::cpu_only", env={"GPU_REQUEST": "h100:2"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "result: no GPU needed" in output


def test_unknown_gpu_type_names_the_valid_ones(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "gpu_app.py::main", env={"GPU_REQUEST": "X9000"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Unknown GPU type 'X9000'" in output and "H100" in output, output


def test_cpu_fallback_runs_gpu_functions_with_a_warning(tmp_path: Path) -> None:
    server = start_server(TEST_HOME, tmp_path / "server.log", extra_env={"KILN_GPU_FALLBACK": "cpu"})
    try:
        result = run_modal(server, "run", "gpu_app.py::main", env={"GPU_REQUEST": "a100,t4"})
    finally:
        stop_server(server)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "result: cuda=none" in output
    assert "running it on the CPU" in output, output
