"""Durable state in one SQLite database (WAL), opened once per server, with a versioned schema.

Two shapes of table live here:

- *object tables* (`mounts`, `images`, `secrets`): `(id, name, namespace, data JSON, …)` rows for
  content-addressed or named objects, read with `put/get/find/delete`;
- *typed tables* for the core's own records (apps, deployments, functions, classes, calls,
  inputs, outputs), queried by `kiln.core.journal` through `execute/query/transaction`.

The schema's version is SQLite's `user_version`; `MIGRATIONS[n]` takes a database from version n
to n + 1, so a database made by any earlier kiln opens with its data kept. Commits are
`synchronous=NORMAL`: a committed transaction is in the WAL file before the call returns, so it
survives the server being killed (not a power cut, which costs the last moments).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OBJECT_KINDS = ("mounts", "images", "secrets")


def _object_table(db: sqlite3.Connection, kind: str) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {kind} (id TEXT PRIMARY KEY, name TEXT, namespace TEXT, "
        "data TEXT NOT NULL, created_at REAL NOT NULL, named_at REAL NOT NULL DEFAULT 0)"
    )
    columns = {row[1] for row in db.execute(f"PRAGMA table_info({kind})")}
    if "named_at" not in columns:  # databases made before names were ordered
        db.execute(f"ALTER TABLE {kind} ADD COLUMN named_at REAL NOT NULL DEFAULT 0")
    db.execute(f"CREATE INDEX IF NOT EXISTS {kind}_by_name ON {kind} (namespace, name)")


def _v1_objects(db: sqlite3.Connection) -> None:
    """The object tables of kiln's first releases (which did not record a schema version)."""
    for kind in OBJECT_KINDS:
        _object_table(db, kind)


def _v2_core_records(db: sqlite3.Connection) -> None:
    """Apps, deployments, functions, classes, calls and containers become durable."""
    db.execute("DROP TABLE IF EXISTS apps")  # an object table of the first releases, never written
    # Statement by statement: executescript() would commit the migration's transaction early.
    tables = """
        CREATE TABLE apps (
            app_id TEXT PRIMARY KEY, name TEXT NOT NULL, environment TEXT NOT NULL,
            description TEXT NOT NULL, state INTEGER NOT NULL, frontend TEXT NOT NULL,
            created_at REAL NOT NULL, stopped_at REAL NOT NULL,
            function_ids TEXT NOT NULL, class_ids TEXT NOT NULL, version INTEGER NOT NULL);
        CREATE INDEX apps_by_name ON apps (environment, name);
        CREATE TABLE deployments (
            app_id TEXT NOT NULL, version INTEGER NOT NULL, deployed_at REAL NOT NULL,
            tag TEXT NOT NULL, client_version TEXT NOT NULL, rollback_of INTEGER NOT NULL,
            commit_info BLOB NOT NULL, function_ids TEXT NOT NULL, class_ids TEXT NOT NULL,
            snapshot TEXT NOT NULL, PRIMARY KEY (app_id, version));
        CREATE TABLE functions (
            function_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, frontend TEXT NOT NULL,
            definition BLOB NOT NULL, meta BLOB NOT NULL, created_at REAL NOT NULL);
        CREATE INDEX functions_by_app ON functions (app_id);
        CREATE TABLE classes (
            class_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, frontend TEXT NOT NULL, meta BLOB NOT NULL);
        CREATE INDEX classes_by_app ON classes (app_id);
        CREATE TABLE calls (
            call_id TEXT PRIMARY KEY, function_id TEXT NOT NULL, app_id TEXT NOT NULL,
            invocation TEXT NOT NULL, is_map INTEGER NOT NULL, retry TEXT NOT NULL,
            cancelled INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
        CREATE INDEX calls_by_age ON calls (created_at);
        CREATE TABLE inputs (
            input_id TEXT PRIMARY KEY, call_id TEXT NOT NULL, idx INTEGER NOT NULL,
            payload BLOB NOT NULL, method_name TEXT NOT NULL, final INTEGER NOT NULL);
        CREATE INDEX inputs_by_call ON inputs (call_id);
        CREATE TABLE outputs (
            call_id TEXT NOT NULL, seq INTEGER NOT NULL, input_id TEXT NOT NULL, idx INTEGER NOT NULL,
            status INTEGER NOT NULL, message TEXT NOT NULL, payload BLOB NOT NULL,
            data_format INTEGER NOT NULL, task_id TEXT NOT NULL, started_at REAL NOT NULL,
            created_at REAL NOT NULL, PRIMARY KEY (call_id, seq));
        CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, function_id TEXT NOT NULL,
            enqueued_at REAL NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL,
            exit TEXT NOT NULL);
        CREATE INDEX tasks_by_app ON tasks (app_id);
        """
    for statement in tables.split(";"):
        if statement.strip():
            db.execute(statement)


def _v3_function_overrides(db: sqlite3.Connection) -> None:
    """Runtime autoscaler changes become durable."""
    db.execute("ALTER TABLE functions ADD COLUMN overrides TEXT NOT NULL DEFAULT '{}'")


def _v4_schedules(db: sqlite3.Connection) -> None:
    """When each scheduled function's period started (its deploy) and when it last ran."""
    db.execute(
        "CREATE TABLE schedules (function_id TEXT PRIMARY KEY, anchor REAL NOT NULL, last_run REAL NOT NULL)"
    )


def _v5_proxy_tokens(db: sqlite3.Connection) -> None:
    """Proxy tokens for web endpoints that require proxy auth (secrets kept as hashes)."""
    _object_table(db, "proxy_tokens")


def _v6_dicts_and_queues(db: sqlite3.Connection) -> None:
    """Named and ephemeral Dicts and Queues with their contents (`storage/dicts.py`, `queues.py`)."""
    tables = """
        CREATE TABLE dicts (
            id TEXT PRIMARY KEY, name TEXT, environment TEXT NOT NULL, created_at REAL NOT NULL,
            lifetime TEXT NOT NULL, owner_app TEXT NOT NULL, heartbeat_at REAL NOT NULL);
        CREATE UNIQUE INDEX dicts_by_name ON dicts (environment, name) WHERE name IS NOT NULL;
        CREATE INDEX dicts_by_age ON dicts (environment, created_at);
        CREATE TABLE dict_entries (
            seq INTEGER PRIMARY KEY, dict_id TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
            UNIQUE (dict_id, key));
        CREATE TABLE queues (
            id TEXT PRIMARY KEY, name TEXT, environment TEXT NOT NULL, created_at REAL NOT NULL,
            lifetime TEXT NOT NULL, owner_app TEXT NOT NULL, heartbeat_at REAL NOT NULL);
        CREATE UNIQUE INDEX queues_by_name ON queues (environment, name) WHERE name IS NOT NULL;
        CREATE INDEX queues_by_age ON queues (environment, created_at);
        CREATE TABLE queue_partitions (
            queue_id TEXT NOT NULL, partition BLOB NOT NULL, expires_at REAL NOT NULL,
            PRIMARY KEY (queue_id, partition));
        CREATE INDEX queue_partitions_by_expiry ON queue_partitions (expires_at);
        CREATE TABLE queue_items (
            entry_id INTEGER PRIMARY KEY AUTOINCREMENT, queue_id TEXT NOT NULL, partition BLOB NOT NULL,
            value BLOB NOT NULL);
        CREATE INDEX queue_items_by_partition ON queue_items (queue_id, partition, entry_id);
        CREATE TABLE queue_put_requests (request_id TEXT PRIMARY KEY, at REAL NOT NULL);
        CREATE INDEX queue_put_requests_by_age ON queue_put_requests (at);
        """
    for statement in tables.split(";"):
        if statement.strip():
            db.execute(statement)


def _v7_secret_owners(db: sqlite3.Connection) -> None:
    """Anonymous secrets record who owns them ('' lasting, an app ID, or '*' for a client's
    ephemeral one), so they are removed with their app instead of piling up."""
    db.execute("ALTER TABLE secrets ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX secrets_by_owner ON secrets (owner)")


def _v8_environments(db: sqlite3.Connection) -> None:
    """Environments a user created (`modal environment create`); "main" always exists."""
    _object_table(db, "environments")


def _v9_volumes(db: sqlite3.Connection) -> None:
    """Named and ephemeral Volumes (`storage/volumes.py`); their files are trees under KILN_HOME."""
    _named_objects_table(db, "volumes")


def _named_objects_table(db: sqlite3.Connection, table: str) -> None:
    """A table of `storage/named.py`'s objects (as v6 made for dicts and queues)."""
    _execute_script(
        db,
        f"""
        CREATE TABLE {table} (
            id TEXT PRIMARY KEY, name TEXT, environment TEXT NOT NULL, created_at REAL NOT NULL,
            lifetime TEXT NOT NULL, owner_app TEXT NOT NULL, heartbeat_at REAL NOT NULL);
        CREATE UNIQUE INDEX {table}_by_name ON {table} (environment, name) WHERE name IS NOT NULL;
        CREATE INDEX {table}_by_age ON {table} (environment, created_at);
        """,
    )


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Statement by statement: executescript() would commit the migration's transaction early."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v10_sandboxes(db: sqlite3.Connection) -> None:
    """Sandboxes: what each was, and how it ended (so `Sandbox.from_id` after a restart can say
    why it is gone). (Idempotent: the step was v9 on the sandbox branch before the volumes' v9.)"""
    db.execute(
        "CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, app_id TEXT NOT NULL, "
        "environment TEXT NOT NULL, name TEXT, task_id TEXT NOT NULL, data TEXT NOT NULL, "
        "created_at REAL NOT NULL, ended_at REAL NOT NULL DEFAULT 0, result TEXT)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS sandboxes_by_app ON sandboxes (app_id, created_at)")
    db.execute("CREATE INDEX IF NOT EXISTS sandboxes_by_task ON sandboxes (task_id)")


def _v11_fal_requests(db: sqlite3.Connection) -> None:
    """fal's queue requests (`storage/fal_requests.py`): submitted, running and finished ones, in
    submission order (`seq`). A NULL body is in a file of its own beside the database.
    (Idempotent, so the step can move to another number if a parallel branch also took v11.)"""
    _execute_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS fal_requests (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE,
            function_id TEXT NOT NULL, app_path TEXT NOT NULL, path TEXT NOT NULL, method TEXT NOT NULL,
            headers TEXT NOT NULL, body BLOB, status TEXT NOT NULL, submitted_at REAL NOT NULL,
            response_status INTEGER NOT NULL DEFAULT 0, response_headers TEXT NOT NULL DEFAULT '[]',
            response_body BLOB, error TEXT NOT NULL DEFAULT '', finished_at REAL NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS fal_requests_unfinished ON fal_requests (finished_at, seq);
        """,
    )


def _v12_fal_request_logs(db: sqlite3.Connection) -> None:
    """The lines a fal queue request's runner printed while it ran (a JSON list of fal's log
    items), for its status with `logs=1`."""
    db.execute("ALTER TABLE fal_requests ADD COLUMN logs TEXT NOT NULL DEFAULT '[]'")


# MIGRATIONS[n] upgrades a database at version n. Append; never edit a released step.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_objects,
    _v2_core_records,
    _v3_function_overrides,
    _v4_schedules,
    _v5_proxy_tokens,
    _v6_dicts_and_queues,
    _v7_secret_owners,
    _v8_environments,
    _v9_volumes,
    _v10_sandboxes,
    _v11_fal_requests,
    _v12_fal_request_logs,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.version_found = self._db.execute("PRAGMA user_version").fetchone()[0]
        self._migrate()

    def _migrate(self) -> None:
        version = self.version_found
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path_hint()} was written by a newer kiln (schema {version}, this kiln knows "
                f"{SCHEMA_VERSION}); upgrade kiln or point KILN_HOME elsewhere"
            )
        for step in range(version, SCHEMA_VERSION):
            with self.transaction():
                MIGRATIONS[step](self._db)
                self._db.execute(f"PRAGMA user_version = {step + 1}")

    def path_hint(self) -> str:
        row = self._db.execute("PRAGMA database_list").fetchone()
        return str(row[2]) if row else "the state database"

    # --- typed tables

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- object tables

    def put(
        self, kind: str, object_id: str, data: dict[str, Any], name: str | None = None, namespace: str = ""
    ) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                f"INSERT INTO {kind} (id, name, namespace, data, created_at, named_at) VALUES (?, ?, ?, ?, ?, ?) "
                # Re-putting an object without a name keeps the name it has (content-addressed mounts).
                "ON CONFLICT(id) DO UPDATE SET data=excluded.data, name=COALESCE(excluded.name, name), "
                "namespace=CASE WHEN excluded.name IS NULL THEN namespace ELSE excluded.namespace END, "
                "named_at=CASE WHEN excluded.name IS NULL THEN named_at ELSE excluded.named_at END",
                (object_id, name, namespace, json.dumps(data), now, now if name is not None else 0),
            )

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT data FROM {kind} WHERE id = ?", (object_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def find(self, kind: str, name: str, namespace: str = "") -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT id, data FROM {kind} WHERE name = ? AND namespace = ? ORDER BY named_at DESC LIMIT 1",
                (name, namespace),
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def named(self, kind: str, namespace: str) -> list[tuple[str, str, dict[str, Any], float]]:
        """(id, name, data, created_at) of every named object in `namespace`, newest name first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, name, data, created_at FROM {kind} WHERE name IS NOT NULL AND namespace = ? "
                "ORDER BY named_at DESC",
                (namespace,),
            ).fetchall()
        return [(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def delete(self, kind: str, object_id: str) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {kind} WHERE id = ?", (object_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
