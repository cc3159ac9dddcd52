"""Durable state in one SQLite database (WAL): named and identified objects as JSON rows.

Each kind of object gets a table `(id PRIMARY KEY, name, namespace, data JSON, created_at)`;
the few queries kiln needs (by ID, by name) stay here instead of spreading SQL around.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

KINDS = ("mounts", "images", "secrets", "apps")


class StateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for kind in KINDS:
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} (id TEXT PRIMARY KEY, name TEXT, namespace TEXT, "
                "data TEXT NOT NULL, created_at REAL NOT NULL, named_at REAL NOT NULL DEFAULT 0)"
            )
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({kind})")}
            if "named_at" not in columns:  # databases made before names were ordered
                self._db.execute(f"ALTER TABLE {kind} ADD COLUMN named_at REAL NOT NULL DEFAULT 0")
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {kind}_by_name ON {kind} (namespace, name)")

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

    def delete(self, kind: str, object_id: str) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {kind} WHERE id = ?", (object_id,))

    def close(self) -> None:
        self._db.close()
