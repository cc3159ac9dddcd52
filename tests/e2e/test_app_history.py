"""A deployed app's versions from the command line: `modal app history`, `modal app rollback`,
`modal app stop`, and a rollback that survives `kill -9` and a restart."""

from __future__ import annotations

import re

import pytest

from tests.conftest import RestartableServer, run_modal
from tests.e2e.test_restart import app_states, call, call_error, deploy, listing, output

pytestmark = pytest.mark.e2e

NAME = "kiln-test-history"


def versions(server: RestartableServer) -> list[int]:
    """`modal app history`'s versions, newest first."""
    rows = listing(server, "app", "history", NAME)
    assert all(re.fullmatch(r"v\d+", row["version"]) for row in rows), rows
    return [int(row["version"][1:]) for row in rows]


@pytest.mark.timeout(300)
def test_history_rollback_and_stop_of_a_deployed_app_across_a_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    deploy(server, NAME, "history_app_v1.py")
    assert call(server, NAME, "answer", 5) == "v1:5"
    deploy(server, NAME, "history_app_v2.py")
    assert call(server, NAME, "answer", 5) == "v2:50"
    assert call(server, NAME, "added_in_v2") == "only in v2"
    assert versions(server) == [2, 1]

    rolled = run_modal(server.server, "app", "rollback", NAME, "v1", timeout=120)
    assert rolled.returncode == 0, output(rolled)
    assert call(server, NAME, "answer", 5) == "v1:5"
    # The app is v1's again, all of it: v2's other function went with v2.
    assert call_error(server, NAME, "added_in_v2").startswith("NotFoundError"), "v2's function survived"
    # A rollback is a deployment of its own.
    assert versions(server) == [3, 2, 1]

    server.kill_9()
    server.restart()
    assert call(server, NAME, "answer", 6) == "v1:6"
    assert versions(server) == [3, 2, 1]
    assert app_states(server, NAME) == ["deployed"]

    stopped = run_modal(server.server, "app", "stop", NAME, "--yes", timeout=120)
    assert stopped.returncode == 0, output(stopped)
    error = call_error(server, NAME, "answer", 7)
    assert error.startswith("NotFoundError") and f"No app named '{NAME}'" in error, error
    assert app_states(server, NAME) == ["stopped"]
