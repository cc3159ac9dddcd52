"""What Dicts and Queues share: named, ephemeral and app-owned objects over one table each.

An object is *named* (found by its name in an environment until deleted), *ephemeral* (lives while
its client heartbeats: deleted once `grace` seconds pass without a beat) or *owned by an app*
(deleted when the app stops). Deleting an object deletes its contents in the same transaction.
Every change is committed before the method returns, so what a caller was told survives a crash.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.errors import NotFound
from kiln.ids import new_id
from kiln.storage.state import StateStore

DEFAULT_EPHEMERAL_GRACE = 900.0  # three missed beats of the Modal client's 300 s heartbeat


class Lifetime(enum.Enum):
    NAMED = "named"
    EPHEMERAL = "ephemeral"
    APP = "app"


class IfExists(enum.Enum):
    """What `create` does when the name is taken."""

    REUSE = "reuse"  # return the existing object
    REPLACE = "replace"  # delete it (and its contents) and create a new one


@dataclass(frozen=True)
class StoredObject:
    object_id: str
    name: str  # "" for an anonymous object
    environment: str
    created_at: float  # wall-clock seconds
    lifetime: Lifetime


class NamedObjects:
    """Names, lifetimes and listing of one kind of object (a table `id, name, environment, …`)
    whose contents live in `contents` tables, each `(table, column naming the object)`."""

    kind = "object"  # for messages: "dict", "queue"

    def __init__(
        self,
        state: StateStore,
        table: str,
        prefix: str,
        contents: Sequence[tuple[str, str]],
        clock: Callable[[], float] = time.time,
        ephemeral_grace: float = DEFAULT_EPHEMERAL_GRACE,
    ) -> None:
        self.state = state
        self._table = table
        self._prefix = prefix
        self._contents = tuple(contents)
        self._clock = clock
        self.ephemeral_grace = ephemeral_grace

    _COLUMNS = "id, name, environment, created_at, lifetime"

    def _row(self, row: tuple[Any, ...]) -> StoredObject:
        object_id, name, environment, created_at, lifetime = row
        return StoredObject(object_id, name or "", environment, created_at, Lifetime(lifetime))

    # --- finding

    def lookup(self, name: str, environment: str) -> StoredObject | None:
        """The object named `name` in `environment`, if any."""
        rows = self.state.query(
            f"SELECT {self._COLUMNS} FROM {self._table} WHERE environment = ? AND name = ?",
            (environment, name),
        )
        return self._row(rows[0]) if rows else None

    def find(self, object_id: str) -> StoredObject | None:
        rows = self.state.query(f"SELECT {self._COLUMNS} FROM {self._table} WHERE id = ?", (object_id,))
        return self._row(rows[0]) if rows else None

    def info(self, object_id: str) -> StoredObject:
        """The object, or NotFound if it does not exist (any more)."""
        found = self.find(object_id)
        if found is None:
            raise self._missing(object_id)
        return found

    def _missing(self, object_id: str) -> NotFound:
        return NotFound(
            f"{self.kind} {object_id} does not exist: it was deleted, or it was ephemeral and its "
            "client or app has gone. Create it again."
        )

    def _require(self, object_id: str) -> None:
        if not self.state.query(f"SELECT 1 FROM {self._table} WHERE id = ?", (object_id,)):
            raise self._missing(object_id)

    def page(self, environment: str, limit: int = 0, created_before: float = 0.0) -> list[StoredObject]:
        """Named objects of `environment`, newest first; only those created strictly before
        `created_before` when it is set; at most `limit` when it is positive."""
        sql = f"SELECT {self._COLUMNS} FROM {self._table} WHERE name IS NOT NULL AND environment = ?"
        params: list[object] = [environment]
        if created_before > 0:
            sql += " AND created_at < ?"
            params.append(created_before)
        sql += " ORDER BY created_at DESC, id"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._row(r) for r in self.state.query(sql, params)]

    # --- creating

    def create(
        self, name: str, environment: str, if_exists: IfExists = IfExists.REUSE
    ) -> tuple[StoredObject, bool]:
        """The object named `name` (created if missing, or replaced); True when it is new."""
        with self.state.transaction():
            existing = self.lookup(name, environment)
            if existing is not None:
                if if_exists is IfExists.REUSE:
                    return existing, False
                self._delete_rows(existing.object_id)
            return self._insert(name, environment, Lifetime.NAMED, ""), True

    def create_ephemeral(self, environment: str) -> StoredObject:
        """An anonymous object that lives while `heartbeat` is called at least every `grace` s."""
        return self._insert(None, environment, Lifetime.EPHEMERAL, "")

    def create_for_app(self, environment: str, app_id: str) -> StoredObject:
        """An anonymous object deleted when app `app_id` stops (`forget_app`)."""
        return self._insert(None, environment, Lifetime.APP, app_id)

    def _insert(self, name: str | None, environment: str, lifetime: Lifetime, owner: str) -> StoredObject:
        now = self._clock()
        obj = StoredObject(new_id(self._prefix), name or "", environment, now, lifetime)
        self.state.execute(
            f"INSERT INTO {self._table} (id, name, environment, created_at, lifetime, owner_app, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (obj.object_id, name, environment, now, lifetime.value, owner, now),
        )
        return obj

    # --- ending

    def delete(self, object_id: str) -> None:
        """Delete the object and its contents (NotFound if it does not exist)."""
        with self.state.transaction():
            self._require(object_id)
            self._delete_rows(object_id)
        self._deleted([object_id])

    def _delete_rows(self, object_id: str) -> None:
        for table, column in self._contents:
            self.state.execute(f"DELETE FROM {table} WHERE {column} = ?", (object_id,))
        self.state.execute(f"DELETE FROM {self._table} WHERE id = ?", (object_id,))

    def _deleted(self, object_ids: list[str]) -> None:
        """Called after objects are deleted (subclasses wake their waiters)."""

    def heartbeat(self, object_id: str) -> None:
        """An ephemeral object's client is still there."""
        self._require(object_id)
        self.state.execute(
            f"UPDATE {self._table} SET heartbeat_at = ? WHERE id = ?", (self._clock(), object_id)
        )

    def expire(self) -> list[str]:
        """Delete ephemeral objects whose heartbeats stopped more than `grace` seconds ago."""
        cutoff = self._clock() - self.ephemeral_grace
        rows = self.state.query(
            f"SELECT id FROM {self._table} WHERE lifetime = ? AND heartbeat_at < ?",
            (Lifetime.EPHEMERAL.value, cutoff),
        )
        return self._delete_all([r[0] for r in rows])

    def forget_app(self, app_id: str) -> list[str]:
        """Delete the objects app `app_id` owned (it stopped)."""
        rows = self.state.query(
            f"SELECT id FROM {self._table} WHERE lifetime = ? AND owner_app = ?", (Lifetime.APP.value, app_id)
        )
        return self._delete_all([r[0] for r in rows])

    def _delete_all(self, object_ids: list[str]) -> list[str]:
        if object_ids:
            with self.state.transaction():
                for object_id in object_ids:
                    self._delete_rows(object_id)
            self._deleted(object_ids)
        return object_ids
