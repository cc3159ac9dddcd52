"""The server as a process: start-up errors, the embedded `kiln run`, and clean teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_HOME, run_modal, start_server, stop_server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def test_missing_bubblewrap_is_one_message_with_the_install_command(tmp_path: Path) -> None:
    empty_path = tmp_path / "bin"  # a PATH on which no bwrap can be found
    empty_path.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "server", "--port", "0"],
        env={**os.environ, "PATH": str(empty_path), "KILN_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "bubblewrap is not installed" in result.stderr
    assert "apt-get install -y bubblewrap" in result.stderr
    assert "Traceback" not in result.stderr


def descendants(pid: int) -> dict[int, str]:
    """Processes below `pid` (pid → command name)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            names[int(entry.name)] = name
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found[child] = names[child]
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_no_container_outlives_the_server(tmp_path: Path) -> None:
    server = start_server(TEST_HOME, tmp_path / "server.log")
    try:
        # Detached: the app, and its warm container, keep running after the client exits.
        result = run_modal(server, "run", "-d", "basics.py::echo", "--x", "1")
        assert result.returncode == 0, result.stdout + result.stderr
        sandboxes = {pid for pid, name in descendants(server.process.pid).items() if name == "bwrap"}
        assert sandboxes, "the detached app's container should still be running"
    finally:
        stop_server(server)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in sandboxes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in sandboxes if alive(pid)]


@pytest.mark.slow
def kiln_run_quickstart() -> subprocess.CompletedProcess[str]:
    """The README's main job: `kiln run examples/quickstart.py` (embedded server)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kiln"), "run", str(ROOT / "examples" / "quickstart.py")],
        env={**os.environ, "KILN_HOME": str(TEST_HOME)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_readme_quickstart_runs_the_example_app() -> None:
    first = kiln_run_quickstart()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "sum of squares below 1000 = 332833500 (expected 332833500)" in first.stdout
    assert "countdown: [5, 4, 3, 2, 1]" in first.stdout
    assert "hello from inside the container" in first.stdout
    second = kiln_run_quickstart()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "=> Step" not in second.stdout + second.stderr, "a second run must build nothing"


def test_a_second_server_on_the_same_home_keeps_its_own_state_and_leaves_the_first_ones_alone(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = start_server(home, tmp_path / "first.log")
    try:
        second = start_server(home, tmp_path / "second.log")
        try:
            assert "another kiln process holds the state" in second.log()
            assert "another kiln process" not in first.log()
            # Each answers, and neither lists the other's apps.
            assert run_modal(first, "run", "basics.py::echo", "--x", "1").returncode == 0
            listed = run_modal(second, "app", "list", "--json")
            assert listed.returncode == 0 and "kiln-test-basics" not in listed.stdout, listed.stdout
        finally:
            stop_server(second)
    finally:
        stop_server(first)
