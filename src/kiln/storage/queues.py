"""Queues: durable FIFO queues, named or ephemeral (lifetimes in `kiln.storage.named`).

A queue has partitions, each named by opaque bytes (the default partition is `b""`). Each
partition has a time to live, renewed by every put: once it passes with no put, the partition and
its items are gone. A partition holds at most `max_partition_items` items of at most
`max_item_bytes` each (Modal's limits by default). Items are numbered by an entry ID that only
grows, so a reader can iterate without taking items (`next_items`).

Every put and take is committed before the method returns. A blocked `get` is woken by a put to
its partition at once: waiters wait on a `Changed` per (queue, partition).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kiln.errors import InvalidRequest, LimitExceeded
from kiln.storage.named import DEFAULT_EPHEMERAL_GRACE, NamedObjects
from kiln.storage.state import StateStore
from kiln.streams import Changed

DEFAULT_PARTITION_TTL = 24 * 3600.0
DEFAULT_MAX_PARTITION_ITEMS = 5_000
DEFAULT_MAX_ITEM_BYTES = 1024 * 1024
_NEXT_ITEMS_BATCH = 100
_REQUEST_MEMORY = 3600.0  # how long a put's request ID is remembered (to drop a re-sent put)


class Queues(NamedObjects):
    kind = "Queue"

    def __init__(
        self,
        state: StateStore,
        clock: Callable[[], float] = time.time,
        ephemeral_grace: float = DEFAULT_EPHEMERAL_GRACE,
        max_partition_items: int = DEFAULT_MAX_PARTITION_ITEMS,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        contents = [("queue_items", "queue_id"), ("queue_partitions", "queue_id")]
        super().__init__(state, "queues", "qu", contents, clock, ephemeral_grace)
        self.max_partition_items = max_partition_items
        self.max_item_bytes = max_item_bytes
        # (queue, partition) → its wake-up signal and how many wait on it (dropped at none).
        self._waiters: dict[str, dict[bytes, tuple[Changed, int]]] = {}

    # --- writing

    def put(
        self,
        queue_id: str,
        values: list[bytes],
        partition: bytes = b"",
        ttl: float = DEFAULT_PARTITION_TTL,
        request_id: str = "",
    ) -> None:
        """Append `values` to the partition, all or none. LimitExceeded if they do not fit now
        (a caller may retry later). A `request_id` seen before (a re-sent put) adds nothing."""
        for value in values:
            if len(value) > self.max_item_bytes:
                raise InvalidRequest(
                    f"a Queue item of {len(value):,} bytes is over the limit of {self.max_item_bytes:,} bytes "
                    "per item: put large data in a Volume or Dict and queue its path or key"
                )
        if len(values) > self.max_partition_items:
            raise InvalidRequest(
                f"{len(values):,} items cannot fit in a Queue partition, which holds at most "
                f"{self.max_partition_items:,}: put them in smaller batches"
            )
        if ttl <= 0:
            raise InvalidRequest(f"partition_ttl must be positive (got {ttl})")
        now = self._clock()
        with self.state.transaction():
            self._require(queue_id)
            if request_id and self.state.query(
                "SELECT 1 FROM queue_put_requests WHERE request_id = ?", (request_id,)
            ):
                return
            self._purge(queue_id, now)
            held = self._count(queue_id, partition)
            if held + len(values) > self.max_partition_items:
                raise LimitExceeded(
                    f"the Queue partition is full ({held:,} of {self.max_partition_items:,} items): wait for "
                    "consumers to take items, or put with a timeout"
                )
            self.state.execute_many(
                "INSERT INTO queue_items (queue_id, partition, value) VALUES (?, ?, ?)",
                [(queue_id, partition, value) for value in values],
            )
            self.state.execute(
                "INSERT INTO queue_partitions (queue_id, partition, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (queue_id, partition) DO UPDATE SET expires_at = excluded.expires_at",
                (queue_id, partition, now + ttl),
            )
            if request_id:
                self.state.execute(
                    "INSERT INTO queue_put_requests (request_id, at) VALUES (?, ?)", (request_id, now)
                )
        self._wake(queue_id, partition)

    # --- reading

    async def get(
        self, queue_id: str, n: int = 1, partition: bytes = b"", timeout: float = 0.0
    ) -> list[bytes]:
        """Take up to `n` items from the front of the partition; if there are none, wait up to
        `timeout` seconds for some (an empty list if none came)."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.take(queue_id, n, partition)
            remaining = deadline - time.monotonic()
            if values or remaining <= 0:
                return values
            await self._wait(queue_id, partition, remaining)

    def take(self, queue_id: str, n: int = 1, partition: bytes = b"") -> list[bytes]:
        """Take up to `n` items from the front of the partition, without waiting."""
        with self.state.transaction():
            self._require(queue_id)
            self._purge(queue_id, self._clock())
            rows = self.state.query(
                "SELECT entry_id, value FROM queue_items WHERE queue_id = ? AND partition = ? "
                "ORDER BY entry_id LIMIT ?",
                (queue_id, partition, max(1, n)),
            )
            if rows:
                self.state.execute(
                    "DELETE FROM queue_items WHERE queue_id = ? AND partition = ? AND entry_id <= ?",
                    (queue_id, partition, rows[-1][0]),
                )
        return [bytes(value) for _, value in rows]

    async def next_items(
        self, queue_id: str, partition: bytes = b"", after: int = 0, timeout: float = 0.0
    ) -> list[tuple[int, bytes]]:
        """(entry ID, value) of the items after entry `after`, oldest first, without taking them;
        if there are none, wait up to `timeout` seconds for some."""
        deadline = time.monotonic() + timeout
        while True:
            with self.state.transaction():
                self._require(queue_id)
                self._purge(queue_id, self._clock())
                rows = self.state.query(
                    "SELECT entry_id, value FROM queue_items WHERE queue_id = ? AND partition = ? "
                    "AND entry_id > ? ORDER BY entry_id LIMIT ?",
                    (queue_id, partition, after, _NEXT_ITEMS_BATCH),
                )
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return [(int(entry_id), bytes(value)) for entry_id, value in rows]
            await self._wait(queue_id, partition, remaining)

    def len(self, queue_id: str, partition: bytes = b"", total: bool = False) -> int:
        """Items in the partition, or in every partition with `total`."""
        with self.state.transaction():
            self._require(queue_id)
            self._purge(queue_id, self._clock())
            if total:
                return int(
                    self.state.query("SELECT COUNT(*) FROM queue_items WHERE queue_id = ?", (queue_id,))[0][0]
                )
            return self._count(queue_id, partition)

    def partitions(self, queue_id: str) -> tuple[int, int]:
        """(partitions, items in all of them) of the queue."""
        with self.state.transaction():
            self._purge(queue_id, self._clock())
            partitions = self.state.query(
                "SELECT COUNT(*) FROM queue_partitions WHERE queue_id = ?", (queue_id,)
            )
            items = self.state.query("SELECT COUNT(*) FROM queue_items WHERE queue_id = ?", (queue_id,))
        return int(partitions[0][0]), int(items[0][0])

    def clear(self, queue_id: str, partition: bytes = b"", all_partitions: bool = False) -> None:
        """Remove every item of the partition (of every partition with `all_partitions`)."""
        with self.state.transaction():
            self._require(queue_id)
            if all_partitions:
                self.state.execute("DELETE FROM queue_items WHERE queue_id = ?", (queue_id,))
                self.state.execute("DELETE FROM queue_partitions WHERE queue_id = ?", (queue_id,))
            else:
                where = "WHERE queue_id = ? AND partition = ?"
                self.state.execute(f"DELETE FROM queue_items {where}", (queue_id, partition))
                self.state.execute(f"DELETE FROM queue_partitions {where}", (queue_id, partition))

    def _count(self, queue_id: str, partition: bytes) -> int:
        rows = self.state.query(
            "SELECT COUNT(*) FROM queue_items WHERE queue_id = ? AND partition = ?", (queue_id, partition)
        )
        return int(rows[0][0])

    # --- time to live

    def expire(self) -> list[str]:
        """Delete ephemeral queues whose heartbeats stopped, partitions past their time to live,
        and put request IDs too old to be re-sent. Returns the queues deleted."""
        now = self._clock()
        with self.state.transaction():
            self.state.execute(
                "DELETE FROM queue_items WHERE (queue_id, partition) IN "
                "(SELECT queue_id, partition FROM queue_partitions WHERE expires_at <= ?)",
                (now,),
            )
            self.state.execute("DELETE FROM queue_partitions WHERE expires_at <= ?", (now,))
            self.state.execute("DELETE FROM queue_put_requests WHERE at < ?", (now - _REQUEST_MEMORY,))
        return super().expire()

    def _purge(self, queue_id: str, now: float) -> None:
        """Drop this queue's partitions past their time to live (inside a transaction)."""
        expired = self.state.query(
            "SELECT partition FROM queue_partitions WHERE queue_id = ? AND expires_at <= ?", (queue_id, now)
        )
        for (partition,) in expired:
            where = "WHERE queue_id = ? AND partition = ?"
            self.state.execute(f"DELETE FROM queue_items {where}", (queue_id, partition))
            self.state.execute(f"DELETE FROM queue_partitions {where}", (queue_id, partition))

    # --- waking waiters

    async def _wait(self, queue_id: str, partition: bytes, timeout: float) -> None:
        """Until the next put to the partition (or its queue is deleted), at most `timeout` s."""
        partitions = self._waiters.setdefault(queue_id, {})
        changed, waiting = partitions.get(partition) or (Changed(), 0)
        partitions[partition] = (changed, waiting + 1)
        try:
            await changed.wait(timeout)
        finally:
            partitions = self._waiters.get(queue_id, {})
            if partition in partitions:
                changed, waiting = partitions[partition]
                if waiting > 1:
                    partitions[partition] = (changed, waiting - 1)
                else:
                    del partitions[partition]
                    if not partitions:
                        del self._waiters[queue_id]

    def _wake(self, queue_id: str, partition: bytes) -> None:
        if partition in self._waiters.get(queue_id, {}):
            self._waiters[queue_id][partition][0].notify()

    def _deleted(self, object_ids: list[str]) -> None:
        for queue_id in object_ids:  # waiters wake, and find the queue gone
            for changed, _ in self._waiters.pop(queue_id, {}).values():
                changed.notify()
