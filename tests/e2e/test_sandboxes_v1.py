"""Sandboxes over the official client's V1 protocol (MODAL_SANDBOX_V2=0, which `gpu=` forces
too), entrypoints on a terminal (`pty=True`), GPUs, and sandboxes as `modal container`s.

Each script run (tests/apps/sandbox_v1_script.py) does a batch of checks and reports them as
JSON; the runs are shared by the tests of this module, so it starts few clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kiln.core.gpus import detect_gpus
from tests.conftest import KilnServer, RestartableServer, run_client, run_modal

pytestmark = pytest.mark.e2e

V1 = {"MODAL_SANDBOX_V2": "0"}  # the client's config `sandbox_v2`, from its environment


def run_checks(
    kiln: KilnServer, checks: str, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """What sandbox_v1_script.py reports of `checks` (comma-separated), run with `env`."""
    result = run_client(
        kiln,
        "import runpy; runpy.run_path('sandbox_v1_script.py', run_name='__main__')",
        checks,
        *args,
        timeout=300,
        env={"KILN_CA_BUNDLE": str(kiln.home / "tls" / "bundle.pem"), **(env or {})},
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and reports, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(reports[-1].removeprefix("REPORT "))
    return report


@pytest.fixture(scope="module")
def v1(kiln: KilnServer) -> dict[str, Any]:
    """One V1 run: the entrypoint's stdio, an entrypoint on a terminal, a sandbox left running."""
    return run_checks(kiln, "entrypoint,pty,left_running", env=V1)


@pytest.fixture(scope="module")
def v1_running(kiln: KilnServer) -> dict[str, Any]:
    """One V1 run of a long-running sandbox's exec, files, tunnels, lookups, snapshots and end."""
    return run_checks(kiln, "running", env=V1)


@pytest.fixture(scope="module")
def default(kiln: KilnServer) -> dict[str, Any]:
    """One run with the client's default setting: pty=True, gpu=."""
    return run_checks(kiln, "pty,gpu")


def test_a_v1_sandbox_has_ids_of_the_v1_shape(v1: dict[str, Any]) -> None:
    assert v1["v1_ids"] is True


def test_the_entrypoints_stdout_stderr_stdin_and_exit_code_travel_over_v1(v1: dict[str, Any]) -> None:
    assert v1["stdout"] == "hello\ngot abc\ncafé\n"
    assert v1["stderr"] == "oops\n"
    assert v1["returncode"] == [3, 3]  # returncode, poll()


def test_the_entrypoints_output_resumes_from_an_entry_id(v1: dict[str, Any]) -> None:
    assert v1["resumed"] == "got abc\ncafé\n"  # from byte 6, past "hello\n"


def test_an_entrypoint_on_a_terminal_gets_typed_input_and_shows_its_output(
    v1: dict[str, Any], default: dict[str, Any]
) -> None:
    for over_v1, report in ((True, v1), (False, default)):
        is_v1, stdout, stderr, returncode = report["pty"]
        assert is_v1 is over_v1  # pty=True alone keeps V2 (1.6.4); with MODAL_SANDBOX_V2=0 it is V1
        # Its own terminal (the sandbox's devpts); both streams are the terminal, which echoes
        # what was typed and ends lines with CR LF.
        lines = stdout.splitlines()
        assert "/dev/pts/0" in lines and "to-stderr" in lines and "got typed" in lines, stdout
        assert "\r\n" in stdout and stderr == ""
        assert returncode == 5


def test_exec_with_stdin_env_and_workdir_reaches_a_v1_sandbox(v1_running: dict[str, Any]) -> None:
    assert v1_running["exec"] == ["piped yes /tmp\n", "err\n", 4]


def test_the_filesystem_api_reaches_a_v1_sandbox(v1_running: dict[str, Any]) -> None:
    assert v1_running["filesystem"] == ["written through the filesystem API\n"] * 2


def test_a_v1_sandboxs_tunnels_reach_its_servers(v1_running: dict[str, Any]) -> None:
    assert v1_running["tunnels"] == ["tunnel-ok\n", "tunnel-ok\n"]  # TLS (kiln's CA) and plain TCP


def test_a_v1_sandbox_is_found_by_id_name_tags_and_listing(v1_running: dict[str, Any]) -> None:
    assert v1_running["tags"]["role"] == "v1"
    assert v1_running["from_id"] == [None, "same\n"]  # running; an exec through the looked-up handle
    assert v1_running["from_name"] is True
    assert v1_running["listed"] is True
    assert v1_running["listed_after_terminate"] is False


def test_both_filesystem_snapshots_of_a_v1_sandbox_are_images(v1_running: dict[str, Any]) -> None:
    assert v1_running["alive_after_snapshots"] == "alive\n"
    # The command router's TaskSnapshotFilesystem, and the V1 SandboxSnapshotFs.
    assert v1_running["snapshots"] == ["kept\n", "kept\n"]


def test_a_v1_sandbox_ends_by_terminate_and_by_timeout(v1_running: dict[str, Any]) -> None:
    waited, returncode, late_exec = v1_running["terminated"]
    assert waited.startswith("SandboxTerminatedError") and returncode == 137
    assert late_exec.startswith("ConflictError") and "running sandbox" in late_exec
    waited, returncode = v1_running["timeout"]
    assert waited.startswith("SandboxTimeoutError") and returncode == 124


def test_sandboxes_are_containers_that_modal_container_lists_and_stops(
    kiln: KilnServer, v1: dict[str, Any]
) -> None:
    sandbox_id, task_id, app_id = v1["sandbox"]
    listed = run_modal(kiln, "container", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {row["container_id"]: row for row in json.loads(listed.stdout)}
    assert rows[task_id]["app_id"] == app_id and rows[task_id]["app_name"] == "kiln-test-sandboxes-v1"
    stopped = run_modal(kiln, "container", "stop", "--yes", task_id)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert run_checks(kiln, "ended", sandbox_id, env=V1)["ended"] == [137, "SandboxTerminatedError: "]
    again = run_modal(kiln, "container", "stop", "--yes", task_id)
    assert "is already stopped" in again.stdout + again.stderr
    listed = run_modal(kiln, "container", "list", "--json")
    assert task_id not in {row["container_id"] for row in json.loads(listed.stdout)}


@pytest.mark.skipif(bool(detect_gpus()), reason="this machine has a GPU: the refusal does not apply")
def test_a_gpu_sandbox_without_the_gpu_is_refused_with_the_fix(default: dict[str, Any]) -> None:
    refusal = default["gpu"]
    assert refusal.startswith("InvalidError") and "gpu='T4'" in refusal, refusal
    assert "KILN_GPU_FALLBACK=cpu" in refusal, refusal
    assert default["after_gpu"] == "still serving\n"  # the server goes on


@pytest.fixture(scope="module")
def fallback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    base = tmp_path_factory.mktemp("gpu-fallback")
    server = RestartableServer(base / "home", base / "logs")
    server.start({"KILN_GPU_FALLBACK": "cpu"})
    yield server
    server.close()


@pytest.mark.skipif(bool(detect_gpus()), reason="this machine has a GPU: the fallback does not apply")
def test_with_the_cpu_fallback_a_gpu_sandbox_runs_on_the_cpu(fallback_server: RestartableServer) -> None:
    report = run_checks(fallback_server.server, "gpu")
    assert report["gpu"] == "none\n"  # no CUDA_VISIBLE_DEVICES: no GPU given
    assert "a sandbox asks for gpu='T4'" in fallback_server.log() and "running it on the CPU" in (
        fallback_server.log()
    )
