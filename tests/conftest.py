"""Shared fixtures: a real kiln server (a subprocess on loopback) and the official client.

The server's home (layers, blobs) persists in tests/.kiln-home between sessions so that image
layers are built once; layers are content-addressed, so reuse cannot change an outcome.
Set KILN_TEST_HOME to use another directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
TEST_HOME = Path(os.environ.get("KILN_TEST_HOME", TESTS / ".kiln-home"))


@dataclass
class KilnServer:
    url: str
    home: Path
    process: subprocess.Popen[str]
    log_path: Path
    log_file: IO[str]

    @property
    def env(self) -> dict[str, str]:
        """Environment for the official client: this server instead of Modal."""
        config = self.home / "modal.toml"
        return {
            **os.environ,
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": "ak-test",
            "MODAL_TOKEN_SECRET": "as-test",
            "MODAL_CONFIG_PATH": str(config),
            "PYTHONPATH": str(APPS),
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(home: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> KilnServer:
    home.mkdir(parents=True, exist_ok=True)
    (home / "modal.toml").touch()
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "server", "--port", "0"],
        env={**os.environ, "KILN_HOME": str(home), **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    url = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"export MODAL_SERVER_URL=(\S+)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        process.kill()
        process.wait()
        process.stdout.close()
        log_file.close()
        raise RuntimeError(f"kiln server did not start:\n{log_path.read_text()}")
    return KilnServer(url, home, process, log_path, log_file)


def stop_server(server: KilnServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    if server.process.stdout is not None:
        server.process.stdout.close()
    server.log_file.close()


@pytest.fixture(scope="session")
def kiln(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """One kiln server for the session."""
    log_path = tmp_path_factory.mktemp("kiln") / "server.log"
    server = start_server(TEST_HOME, log_path)
    yield server
    stop_server(server)


def run_modal(
    kiln: KilnServer, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`modal <args>` with the official client, as a user would type it (cwd: tests/apps)."""
    return subprocess.run(
        [sys.executable, "-m", "modal", *args],
        cwd=APPS,
        env={**kiln.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def modal_client(kiln: KilnServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the in-process official client at the kiln server (for the Python API)."""
    for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
        monkeypatch.setenv(key, kiln.env[key])
    monkeypatch.syspath_prepend(str(APPS))
