"""The state database's schema: versioned, and upgraded in place with its data kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kiln.storage.state import SCHEMA_VERSION, StateStore


def _first_release_database(path: Path) -> None:
    """A database exactly as kiln's first releases left it: object tables, no schema version
    (and, in the earliest, no `named_at` column)."""
    db = sqlite3.connect(path)
    for kind in ("mounts", "images", "secrets", "apps"):
        db.execute(
            f"CREATE TABLE {kind} (id TEXT PRIMARY KEY, name TEXT, namespace TEXT, "
            "data TEXT NOT NULL, created_at REAL NOT NULL)"
        )
    db.execute(
        "INSERT INTO secrets VALUES ('st-1', 'db-creds', 'main', '{\"env\": {\"K\": \"v\"}, \"created_at\": 1}', 1)"
    )
    db.execute("INSERT INTO mounts VALUES ('mo-1', NULL, '', '{\"files\": []}', 1)")
    db.commit()
    db.close()


def test_a_database_of_the_first_releases_is_upgraded_with_its_objects_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _first_release_database(path)
    state = StateStore(path)
    assert state.version_found == 0
    assert state.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert state.find("secrets", "db-creds", "main") == ("st-1", {"env": {"K": "v"}, "created_at": 1})
    assert state.get("mounts", "mo-1") == {"files": []}
    # The core's typed tables exist and work.
    state.execute(
        "INSERT INTO calls (call_id, function_id, app_id, invocation, is_map, retry, created_at) "
        "VALUES ('fc-1', 'fu-1', 'ap-1', 'sync', 0, '{}', 1)"
    )
    assert state.query("SELECT call_id FROM calls") == [("fc-1",)]
    state.close()


def test_opening_an_upgraded_database_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore(path).close()
    again = StateStore(path)
    assert again.version_found == SCHEMA_VERSION
    again.close()


def test_a_database_from_a_newer_kiln_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer kiln"):
        StateStore(path)


def test_a_new_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def _upgraded_from(path: Path, version: int) -> StateStore:
    """A database as kiln left it at schema `version` (with a schedule in it), opened by this
    kiln: upgraded, the schedule kept."""
    from kiln.storage.state import MIGRATIONS

    db = sqlite3.connect(path)
    for step in MIGRATIONS[:version]:
        step(db)
    db.execute("INSERT INTO schedules VALUES ('fu-1', 1.0, 2.0)")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    state = StateStore(path)
    assert state.version_found == version
    assert state.query("SELECT * FROM schedules") == [("fu-1", 1.0, 2.0)]
    return state


def test_a_version_5_database_gains_dicts_and_queues_with_its_records_kept(tmp_path: Path) -> None:
    from kiln.storage.dicts import Dicts
    from kiln.storage.queues import Queues

    state = _upgraded_from(tmp_path / "state.sqlite3", 5)
    d, _ = Dicts(state).create("d", "main")
    q, _ = Queues(state).create("q", "main")
    assert Dicts(state).put(d.object_id, [(b"k", b"v")])
    Queues(state).put(q.object_id, [b"item"])
    assert Queues(state).take(q.object_id) == [b"item"]
    state.close()


def test_a_version_10_database_gains_fal_queue_requests_with_its_records_kept(tmp_path: Path) -> None:
    from kiln.storage.fal_requests import FalRequest, FalRequests

    state = _upgraded_from(tmp_path / "state.sqlite3", 10)
    requests = FalRequests(state, tmp_path / "fal-requests")
    requests.add(FalRequest("rq-1", "fu-1", "kiln/app", "/", "POST", []), b"{}")
    assert [r.request_id for r in requests.unfinished()] == ["rq-1"]
    state.close()
