"""Dict and Queue figures: the official client against a `kiln server`, and the same operations on
a plain SQLite file in this process (WAL, synchronous=NORMAL, as kiln's state), side by side.

- **Dict put+get**: `d[k] = v` then `d[k]`, one pair at a time, in pairs per second; the peer
  does `INSERT … ON CONFLICT DO UPDATE` then `SELECT` of pickled keys and values.
- **Queue put → get latency**: a consumer process blocked in `q.get()` receives the wall time at
  which this process called `q.put(...)`; p50 over the samples. The peer: `INSERT` an item, then
  `SELECT` and `DELETE` it, in this process (no waiting and no network: the floor).

    .venv/bin/python bench/bench_storage.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, arg_parser, emit, median, ms, percentile, print_table, start_server, stop_server

CONSUMER = """
import sys, time
import modal
q = modal.Queue.from_name(sys.argv[1]).hydrate()
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    put_at = q.get(timeout=60)
    print(time.time() - put_at, flush=True)
"""


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--ops", type=int, help="Dict put+get pairs (default 1000, quick 200)")
    parser.add_argument("--samples", type=int, help="Queue put → get samples (default 200, quick 50)")
    args = parser.parse_args()
    ops = args.ops or (200 if args.quick else 1000)
    samples = args.samples or (50 if args.quick else 200)
    server = start_server(RESULTS / "logs" / f"kiln-storage-{time.strftime('%Y%m%d-%H%M%S')}.log")
    os.environ.update(server.client_env())
    try:
        kiln_dict = _kiln_dict_pairs_per_s(ops)
        kiln_latencies = _kiln_queue_latencies(samples)
    finally:
        stop_server(server)
    with tempfile.TemporaryDirectory() as tmp:
        db = _sqlite(Path(tmp) / "plain.sqlite3")
        sqlite_dict = _sqlite_dict_pairs_per_s(db, ops)
        sqlite_latencies = _sqlite_queue_latencies(db, samples)
    kiln_p50, sqlite_p50 = median(kiln_latencies), median(sqlite_latencies)
    print_table(
        "Dict and Queue: the client against kiln, and plain SQLite in-process",
        ["figure", "kiln", "plain SQLite", "kiln / SQLite"],
        [
            ["Dict put+get pairs/s", kiln_dict, sqlite_dict, kiln_dict / sqlite_dict],
            ["Queue put → get p50 (ms)", ms(kiln_p50), ms(sqlite_p50), kiln_p50 / sqlite_p50],
            [
                "Queue put → get p99 (ms)",
                ms(percentile(kiln_latencies, 99)),
                ms(percentile(sqlite_latencies, 99)),
                None,
            ],
        ],
    )
    emit(
        {
            "peer": "kiln",
            "metrics": {
                "dict_put_get_pairs_per_s": round(kiln_dict, 1),
                "queue_put_get_p50_ms": ms(kiln_p50),
            },
            "details": {
                "sqlite_dict_put_get_pairs_per_s": round(sqlite_dict, 1),
                "sqlite_queue_put_get_p50_ms": ms(sqlite_p50),
                "dict_ratio": round(kiln_dict / sqlite_dict, 4),
                "queue_latency_ratio": round(kiln_p50 / sqlite_p50, 1),
                "ops": ops,
                "samples": samples,
            },
            "notes": [
                "kiln's figures include the client (serialization, its gRPC round trip): each put is "
                "committed before it is answered; the SQLite peer has neither client nor network"
            ],
        },
        args.json,
    )


def _kiln_dict_pairs_per_s(ops: int) -> float:
    import modal

    d = modal.Dict.from_name(f"bench-{time.time_ns()}", create_if_missing=True)
    d["warm-up"] = 0
    started = time.perf_counter()
    for i in range(ops):
        d[f"key-{i}"] = i
        assert d[f"key-{i}"] == i
    return ops / (time.perf_counter() - started)


def _kiln_queue_latencies(samples: int) -> list[float]:
    import modal

    name = f"bench-{time.time_ns()}"
    q = modal.Queue.from_name(name, create_if_missing=True).hydrate()
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, name, str(samples)], stdout=subprocess.PIPE, text=True
    )
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == "ready"
    latencies = []
    for _ in range(samples):
        time.sleep(0.02)  # the consumer is blocked in its get again
        q.put(time.time())
        latencies.append(float(consumer.stdout.readline()))
    consumer.wait(30)
    consumer.stdout.close()
    return latencies


def _sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)")
    return db


def _sqlite_dict_pairs_per_s(db: sqlite3.Connection, ops: int) -> float:
    started = time.perf_counter()
    for i in range(ops):
        key, value = pickle.dumps(f"key-{i}"), pickle.dumps(i)
        db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        assert pickle.loads(db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()[0]) == i
    return ops / (time.perf_counter() - started)


def _sqlite_queue_latencies(db: sqlite3.Connection, samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        put_at = time.perf_counter()
        db.execute("INSERT INTO items (value) VALUES (?)", (pickle.dumps(time.time()),))
        db.execute("BEGIN IMMEDIATE")
        item_id, value = db.execute("SELECT id, value FROM items ORDER BY id LIMIT 1").fetchone()
        db.execute("DELETE FROM items WHERE id = ?", (item_id,))
        db.execute("COMMIT")
        pickle.loads(value)
        latencies.append(time.perf_counter() - put_at)
    return latencies


if __name__ == "__main__":
    main()
