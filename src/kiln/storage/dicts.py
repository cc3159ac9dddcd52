"""Dicts: durable key-value maps, named or ephemeral (lifetimes in `kiln.storage.named`).

Keys and values are opaque bytes (a client's serialization); keys compare byte-wise. Entries keep
the order they were first put in. Every write is committed before the method returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kiln.errors import InvalidRequest
from kiln.storage.named import DEFAULT_EPHEMERAL_GRACE, NamedObjects
from kiln.storage.state import StateStore

DEFAULT_MAX_ENTRY_BYTES = 100 * 1024 * 1024
_CONTENTS_BATCH = 1000


class Dicts(NamedObjects):
    kind = "Dict"

    def __init__(
        self,
        state: StateStore,
        clock: Callable[[], float] = time.time,
        ephemeral_grace: float = DEFAULT_EPHEMERAL_GRACE,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        super().__init__(state, "dicts", "di", [("dict_entries", "dict_id")], clock, ephemeral_grace)
        self.max_entry_bytes = max_entry_bytes

    def put(self, dict_id: str, entries: list[tuple[bytes, bytes]], if_not_exists: bool = False) -> bool:
        """Set every (key, value); with `if_not_exists`, only keys not already there. True if
        anything was written (always, without `if_not_exists`)."""
        for key, value in entries:
            if len(key) + len(value) > self.max_entry_bytes:
                raise InvalidRequest(
                    f"a Dict entry of {len(key) + len(value):,} bytes is over this server's limit of "
                    f"{self.max_entry_bytes:,} bytes (KILN_DICT_MAX_ENTRY_BYTES): store large data in a "
                    "Volume and put its path in the Dict"
                )
        conflict = "DO NOTHING" if if_not_exists else "DO UPDATE SET value = excluded.value"
        with self.state.transaction():
            self._require(dict_id)
            before = self._total_changes()
            self.state.execute_many(
                f"INSERT INTO dict_entries (dict_id, key, value) VALUES (?, ?, ?) ON CONFLICT (dict_id, key) {conflict}",
                [(dict_id, key, value) for key, value in entries],
            )
            return not if_not_exists or self._total_changes() > before

    def _total_changes(self) -> int:
        return int(self.state.query("SELECT total_changes()")[0][0])

    def get(self, dict_id: str, key: bytes) -> bytes | None:
        rows = self.state.query(
            "SELECT value FROM dict_entries WHERE dict_id = ? AND key = ?", (dict_id, key)
        )
        if rows:
            return bytes(rows[0][0])
        self._require(dict_id)
        return None

    def pop(self, dict_id: str, key: bytes) -> bytes | None:
        with self.state.transaction():
            value = self.get(dict_id, key)
            if value is not None:
                self.state.execute("DELETE FROM dict_entries WHERE dict_id = ? AND key = ?", (dict_id, key))
            return value

    def contains(self, dict_id: str, key: bytes) -> bool:
        rows = self.state.query("SELECT 1 FROM dict_entries WHERE dict_id = ? AND key = ?", (dict_id, key))
        if not rows:
            self._require(dict_id)
        return bool(rows)

    def len(self, dict_id: str) -> int:
        self._require(dict_id)
        return self._count(dict_id)

    def _count(self, dict_id: str) -> int:
        return int(self.state.query("SELECT COUNT(*) FROM dict_entries WHERE dict_id = ?", (dict_id,))[0][0])

    def clear(self, dict_id: str) -> None:
        with self.state.transaction():
            self._require(dict_id)
            self.state.execute("DELETE FROM dict_entries WHERE dict_id = ?", (dict_id,))

    def contents(self, dict_id: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), in the order keys were first put; read in batches, so entries put
        while iterating may or may not be seen."""
        self._require(dict_id)
        after = 0
        while True:
            rows = self.state.query(
                "SELECT seq, key, value FROM dict_entries WHERE dict_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (dict_id, after, _CONTENTS_BATCH),
            )
            for _, key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < _CONTENTS_BATCH:
                return
            after = rows[-1][0]
