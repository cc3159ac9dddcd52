"""`modal run` with the official client against a real kiln server."""

from __future__ import annotations

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def test_modal_run_local_entrypoint(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "basics.py", "--n", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"squares: {sum(i * i for i in range(20))}" in result.stdout


def test_modal_run_single_function_with_args(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "basics.py::echo", "--x", "5", "--word", "kiln")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "echo says kiln 5" in result.stdout
