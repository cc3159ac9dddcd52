"""Without a reachable Debian archive, a debian_slim base is a filtered copy of this machine:
the build log says so, and none of the host's secrets are in it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_HOME, KilnServer, run_modal, start_server, stop_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A server whose Debian mirror refuses every connection (a closed loopback port)."""
    server = start_server(
        TEST_HOME,
        tmp_path_factory.mktemp("offline") / "server.log",
        extra_env={"KILN_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"},
    )
    yield server
    stop_server(server)


@pytest.mark.timeout(600)
def test_an_offline_base_says_so_and_holds_none_of_the_hosts_secrets(offline_server: KilnServer) -> None:
    # The base layer is made again each run (5 s), so the build, and the log naming the fallback,
    # happen; nothing else uses it, and every layer above it is still cached.
    for meta in (TEST_HOME / "layers").glob("*/layer.json"):
        if ":filtered:" in json.loads(meta.read_text())["step"]:
            shutil.rmtree(meta.parent)
    result = run_modal(offline_server, "run", "offline_base_app.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    assert found["made"] == "offline"
    for name in ("shadow", "gshadow"):
        inside = found[name]
        assert inside.startswith("root:*:"), inside[:40]
        assert inside != Path(f"/etc/{name}").read_text()
    assert found["machine_id"] == "(No such file or directory)"
    assert not any(name.startswith("ssh_host_") for name in found["ssh"]), found["ssh"]
    assert set(found["root"]) <= {"offline_base_app.py", "__pycache__"}, found["root"]  # the app only
    assert "no Debian archive is reachable" in output, output  # the build log says so
