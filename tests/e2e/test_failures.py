"""Failures: remote exceptions, unpicklable results, containers that die mid-input."""

from __future__ import annotations

import importlib
import traceback
from types import ModuleType

import pytest

from tests.conftest import APPS, KilnServer, run_modal

pytestmark = pytest.mark.e2e

FAILURES_SOURCE = (APPS / "failures_app.py").read_text().splitlines()
RAISE_LINE = next(i for i, line in enumerate(FAILURES_SOURCE, 1) if "KILN-RAISE-LINE" in line)


@pytest.fixture
def failures_app(modal_client: None) -> ModuleType:
    return importlib.import_module("failures_app")


@pytest.mark.timeout(120)
def test_remote_exception_is_the_users_type_with_remote_traceback(failures_app: ModuleType) -> None:
    with failures_app.app.run(), pytest.raises(failures_app.CustomError) as info:
        failures_app.raise_custom.remote(13)
    assert type(info.value) is failures_app.CustomError
    assert str(info.value) == "custom failure for 13"
    text = "".join(traceback.format_exception(info.value))
    # The remote frames: the function that raised, its line, and the function that called it.
    assert "_check" in text and "raise_custom" in text, text
    assert f"line {RAISE_LINE}" in text, text
    # The remote source lines travel too (tb_line_cache): the client keeps them for its printer.
    line_cache = getattr(info.value, "__line_cache__", {})
    assert any("KILN-RAISE-LINE" in line for line in line_cache.values()), line_cache


@pytest.mark.timeout(120)
def test_remote_exception_traceback_in_modal_run(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "failures_app.py::raise_custom", "--x", "5")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "CustomError" in output and "custom failure for 5" in output, output
    assert "_check" in output and f"line {RAISE_LINE}" in output, output


@pytest.mark.timeout(120)
def test_unpicklable_return_value_is_a_clear_error(failures_app: ModuleType) -> None:
    with failures_app.app.run():
        with pytest.raises(Exception) as info:
            failures_app.return_lock.remote()
        message = str(info.value)
        assert "pickle" in message.lower() or "serializ" in message.lower(), repr(info.value)
        assert "lock" in message.lower(), repr(info.value)
        # The function stays usable.
        assert failures_app.ok.remote(1) == 2


def _assert_container_death(exc: BaseException, how: list[str]) -> None:
    import modal.exception

    message = str(exc)
    assert isinstance(exc, modal.exception.Error), repr(exc)
    assert "container" in message.lower(), message
    assert "exited" in message.lower() or "killed" in message.lower(), message
    assert any(h in message for h in how), f"{message!r} should say how the container ended ({how})"


@pytest.mark.timeout(120)
def test_container_os_exit_fails_the_call_and_server_keeps_serving(
    failures_app: ModuleType, kiln: KilnServer
) -> None:
    with failures_app.app.run():
        with pytest.raises(Exception) as info:
            failures_app.hard_exit.remote()
        _assert_container_death(info.value, ["exit code 1"])
        assert "hard_exit" in str(info.value)
        # A new container serves the same function, and other functions are unaffected.
        assert failures_app.hard_exit.remote(0) == "survived"
        assert failures_app.ok.remote(41) == 42
    assert kiln.process.poll() is None


@pytest.mark.timeout(120)
def test_container_segfault_fails_the_call_and_server_keeps_serving(
    failures_app: ModuleType, kiln: KilnServer
) -> None:
    with failures_app.app.run():
        with pytest.raises(Exception) as info:
            failures_app.segfault.remote()
        _assert_container_death(info.value, ["SIGSEGV", "signal 11", "egmentation"])
        assert "segfault" in str(info.value)
        # A new container serves the same function, and other functions are unaffected.
        assert failures_app.segfault.remote(0) == "survived"
        assert failures_app.ok.remote(1) == 2
    assert kiln.process.poll() is None


@pytest.mark.timeout(120)
def test_crash_in_a_map_fails_only_that_input(failures_app: ModuleType) -> None:
    with failures_app.app.run():
        results = list(failures_app.hard_exit.map([0, 1, 0, 0], return_exceptions=True))
        assert results[0] == results[2] == results[3] == "survived", results
        _assert_container_death(results[1], ["exit code 1"])
        with pytest.raises(Exception) as info:
            list(failures_app.hard_exit.map([0, 1]))
        _assert_container_death(info.value, ["exit code 1"])
        assert list(failures_app.ok.map(range(3))) == [1, 2, 3]


@pytest.mark.timeout(120)
def test_server_serves_after_failures(failures_app: ModuleType, kiln: KilnServer) -> None:
    with failures_app.app.run():
        assert failures_app.ok.remote(99) == 100
    assert kiln.process.poll() is None, kiln.log()[-3000:]
