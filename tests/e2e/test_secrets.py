"""Secrets stay secret: never in the server's log or the app's logs, and an app's anonymous
secrets are removed when it stops."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
import uuid

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def _secret_rows(kiln: KilnServer, secret_id: str) -> int:
    db = sqlite3.connect(kiln.home / "state.sqlite3")
    try:
        return int(db.execute("SELECT count(*) FROM secrets WHERE id = ?", (secret_id,)).fetchone()[0])
    finally:
        db.close()


@pytest.mark.timeout(300)
def test_an_anonymous_secret_reaches_its_function_only_and_goes_away_with_its_app(kiln: KilnServer) -> None:
    value = f"kiln-secret-{uuid.uuid4().hex}"
    result = run_modal(kiln, "run", "secrets_app.py", env={"KILN_TEST_SECRET_VALUE": value}, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"fingerprint={hashlib.sha256(value.encode()).hexdigest()}" in result.stdout, output
    secret_id = re.search(r"secret_id=(st-\w+)", result.stdout).group(1)  # type: ignore[union-attr]

    deadline = time.monotonic() + 15
    while _secret_rows(kiln, secret_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _secret_rows(kiln, secret_id) == 0, "the stopped app's anonymous secret is still stored"

    assert value not in kiln.log()
    for path in (kiln.home / "logs").rglob("*"):
        if path.is_file():
            assert value.encode() not in path.read_bytes(), path
    assert value not in output


def test_secret_create_list_and_delete_from_the_cli(kiln: KilnServer) -> None:
    name = f"kiln-test-cli-{uuid.uuid4().hex[:8]}"
    created = run_modal(kiln, "secret", "create", name, "API_KEY=not-shown", "REGION=eu")
    assert created.returncode == 0, created.stdout + created.stderr
    listed = run_modal(kiln, "secret", "list", "--json")
    assert listed.returncode == 0 and name in listed.stdout, listed.stdout + listed.stderr
    assert "not-shown" not in listed.stdout  # names and keys are listed, never values
    deleted = run_modal(kiln, "secret", "delete", "--yes", name)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert name not in run_modal(kiln, "secret", "list", "--json").stdout
    again = run_modal(kiln, "secret", "delete", "--yes", name)
    assert again.returncode != 0 and "not found" in (again.stdout + again.stderr).lower()


def test_environments_are_created_listed_and_deleted_and_scope_named_secrets(kiln: KilnServer) -> None:
    env = f"kt{uuid.uuid4().hex[:8]}"
    assert run_modal(kiln, "environment", "create", env).returncode == 0
    listed = run_modal(kiln, "environment", "list", "--json")
    assert listed.returncode == 0 and env in listed.stdout and "main" in listed.stdout, listed.stdout
    again = run_modal(kiln, "environment", "create", env)
    assert again.returncode != 0 and "already exists" in (again.stdout + again.stderr)
    # A secret made in one environment is not seen from another.
    assert run_modal(kiln, "secret", "create", "-e", env, "scoped-secret", "K=v").returncode == 0
    assert "scoped-secret" in run_modal(kiln, "secret", "list", "-e", env, "--json").stdout
    assert "scoped-secret" not in run_modal(kiln, "secret", "list", "--json").stdout
    assert run_modal(kiln, "environment", "delete", "--yes", env).returncode == 0
    assert env not in run_modal(kiln, "environment", "list", "--json").stdout
