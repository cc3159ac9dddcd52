"""A bad image definition ends with one clear error, stores no layer, and the server keeps serving."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def layer_steps(home: Path) -> list[str]:
    return [json.loads(p.read_text())["step"] for p in (home / "layers").glob("*/layer.json")]


def run_case(kiln: KilnServer, case: str, marker: str = "0"):
    return run_modal(kiln, "run", "bad_images.py", env={"IMAGE_CASE": case, "IMAGE_MARKER": marker})


def test_failing_run_step_shows_command_exit_code_and_output_then_a_fix_succeeds(kiln: KilnServer) -> None:
    marker = uuid.uuid4().hex[:8]
    result = run_case(kiln, "failing-run", marker)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"echo marker-{marker}" in output  # the failing command
    assert "exit code 3" in output
    assert "about to fail" in output  # the tail of its output
    assert not [s for s in layer_steps(kiln.home) if f"marker-{marker}" in s], (
        "a failed step must store no layer"
    )

    fixed = run_case(kiln, "ok", marker)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "result: hello" in fixed.stdout


def test_missing_package_names_the_package(kiln: KilnServer) -> None:
    result = run_case(kiln, "missing-package")
    assert result.returncode != 0
    assert "kiln-no-such-package-exists-xyz" in result.stdout + result.stderr


def test_unknown_dockerfile_instruction_is_named(kiln: KilnServer) -> None:
    result = run_case(kiln, "unknown-instruction")
    assert result.returncode != 0
    assert "FROBNICATE" in result.stdout + result.stderr


def test_python_version_the_machine_lacks_lists_what_it_has(kiln: KilnServer) -> None:
    result = run_case(kiln, "missing-python")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "3.14" in output and "Available: Python" in output


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable-registry", ["Could not reach the registry http://127.0.0.1:9", "unreachable-"]),
        ("copy-missing", ["COPY data/no-such-file-", "exit code 1", "not in the build context"]),
        ("missing-local-dir", ["no-such-dir-"]),
    ],
)
def test_bad_input_ends_with_one_clear_error_then_a_fix_succeeds(
    kiln: KilnServer, case: str, expected: list[str]
) -> None:
    marker = uuid.uuid4().hex[:8]
    before = set(layer_steps(kiln.home))
    result = run_case(kiln, case, marker)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output
    assert "Traceback" not in output and output.count("Error:") == 1
    assert not [s for s in set(layer_steps(kiln.home)) - before if marker in s], (
        "a failed step must store no layer"
    )

    fixed = run_case(kiln, "ok", marker)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "result: hello" in fixed.stdout
