"""modal.Queue through the official client: the Python API, partitions, limits, a consumer
function woken by a put from another process, the CLI, and durability across a `kill -9`."""

from __future__ import annotations

import importlib
import json
import queue
import subprocess
import time
import uuid

import modal
import modal.exception
import pytest

from tests.conftest import KilnServer, RestartableServer, run_client, run_modal

pytestmark = pytest.mark.e2e


def _name() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_put_and_get_in_order_blocking_and_not(modal_client: None) -> None:
    q = modal.Queue.from_name(_name(), create_if_missing=True)
    q.put(1)
    q.put_many([2, {"three": 3}, "four"])
    assert q.len() == 4
    assert q.get() == 1
    assert q.get_many(2) == [2, {"three": 3}]
    assert q.get(block=False) == "four"
    assert q.get(block=False) is None
    assert q.get_many(3, block=False) == []
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)
    with pytest.raises(queue.Empty):
        q.get_many(2, timeout=0.5)
    assert time.monotonic() - started >= 1.0
    q.put_many(list(range(5)))
    q.clear()
    assert q.len() == 0


@pytest.mark.timeout(60)
def test_iterate_reads_without_taking(modal_client: None) -> None:
    with modal.Queue.ephemeral() as q:
        q.put_many(["a", "b", "c"])
        assert list(q.iterate()) == ["a", "b", "c"]
        assert q.len() == 3
        assert list(q.iterate(item_poll_timeout=0.2)) == ["a", "b", "c"]


@pytest.mark.timeout(60)
def test_partitions_with_a_ttl(modal_client: None) -> None:
    with modal.Queue.ephemeral() as q:
        q.put("default")
        q.put_many(["a1", "a2"], partition="a")
        q.put("short-lived", partition="b", partition_ttl=1)
        assert q.len() == 1 and q.len(partition="a") == 2 and q.len(total=True) == 4
        assert q.get(partition="a") == "a1"
        assert list(q.iterate(partition="a")) == ["a2"]
        time.sleep(1.5)
        assert q.len(partition="b") == 0 and q.get(block=False, partition="b") is None
        q.clear(partition="a")
        assert q.len(total=True) == 1
        q.clear(all=True)
        assert q.len(total=True) == 0


@pytest.mark.timeout(120)
def test_a_full_partition_raises_queue_full_after_the_put_timeout(modal_client: None) -> None:
    with modal.Queue.ephemeral() as q:
        q.put_many(list(range(5000)))  # Modal's limit per partition
        started = time.monotonic()
        with pytest.raises(queue.Full):
            q.put("one too many", timeout=3)
        print(f"queue.Full after {time.monotonic() - started:.2f} s")
        with pytest.raises(queue.Full):
            q.put("one too many", block=False)
        q.put("another partition has room", partition="other")
        assert q.get() == 0
        q.put("fits again", timeout=1)
        assert q.len() == 5000
        with pytest.raises(modal.exception.InvalidError, match="limit"):
            q.put(b"x" * (1024 * 1024 + 1), partition="other")


@pytest.mark.timeout(60)
def test_looking_up_a_missing_queue_names_the_fix(modal_client: None) -> None:
    name = _name()
    with pytest.raises(modal.exception.NotFoundError) as caught:
        modal.Queue.from_name(name).len()
    assert "create_if_missing=True" in str(caught.value) and f"modal queue create {name}" in str(caught.value)


PRODUCE = """
import sys, time
import modal
q = modal.Queue.from_name(sys.argv[1]).hydrate()  # the latency measured is the put's alone
q.put(time.time())
"""


@pytest.mark.timeout(300)
def test_a_blocked_consumer_wakes_at_once_on_a_put_from_another_process(
    modal_client: None, kiln: KilnServer
) -> None:
    storage_app = importlib.import_module("storage_app")
    name, ready = _name(), f"ready-{_name()}"
    modal.Queue.objects.create(name)
    flags = modal.Dict.from_name(ready, create_if_missing=True)
    with storage_app.app.run():
        call = storage_app.consume.spawn(name, ready)
        deadline = time.monotonic() + 120
        while not flags.get("ready") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # the consumer is now blocked in its get
        produced = run_client(kiln, PRODUCE, name)
        assert produced.returncode == 0, _output(produced)
        result = call.get(timeout=60)
    print(f"put → get latency, producer process to consumer function: {result['latency_ms']:.1f} ms")
    assert result["latency_ms"] >= 0


@pytest.mark.timeout(300)
def test_a_producer_app_and_a_consumer_app_share_a_queue_and_a_dict_by_name(
    modal_client: None, kiln: KilnServer
) -> None:
    storage_app = importlib.import_module("storage_app")
    name, shared = _name(), f"shared-{_name()}"
    modal.Queue.objects.create(name)
    flags = modal.Dict.from_name(shared, create_if_missing=True)
    with storage_app.app.run():
        call = storage_app.consume.spawn(name, shared)
        deadline = time.monotonic() + 120
        while not flags.get("ready") and time.monotonic() < deadline:
            time.sleep(0.2)
        produced = run_modal(
            kiln, "run", "storage_producer_app.py", "--queue-name", name, "--dict-name", shared, timeout=240
        )
        assert produced.returncode == 0, _output(produced)
        result = call.get(timeout=60)
    assert flags["producer"] == "kiln-test-storage-producer"
    print(f"put → get latency, producer function to consumer function: {result['latency_ms']:.1f} ms")


@pytest.mark.timeout(120)
def test_the_queue_cli(kiln: KilnServer) -> None:
    name = _name()
    created = run_modal(kiln, "queue", "create", name)
    assert created.returncode == 0, _output(created)
    filled = run_client(
        kiln,
        "import modal, sys; q = modal.Queue.from_name(sys.argv[1]); q.put_many(['first', 'second']);"
        " q.put('p1', partition='p')",
        name,
    )
    assert filled.returncode == 0, _output(filled)
    listed = run_modal(kiln, "queue", "list", "--json")
    assert listed.returncode == 0, _output(listed)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows[name]["partitions"] == 2 and rows[name]["total_size"] == 3
    peek = run_modal(kiln, "queue", "peek", name, "2")
    assert peek.returncode == 0 and peek.stdout.split() == ["first", "second"], _output(peek)
    assert run_modal(kiln, "queue", "len", name).stdout.strip() == "2"
    assert run_modal(kiln, "queue", "len", name, "--total").stdout.strip() == "3"
    assert run_modal(kiln, "queue", "len", name, "-p", "p").stdout.strip() == "1"
    cleared = run_modal(kiln, "queue", "clear", name, "--yes")
    assert cleared.returncode == 0, _output(cleared)
    assert run_modal(kiln, "queue", "len", name, "--total").stdout.strip() == "1"
    assert run_modal(kiln, "queue", "clear", name, "--all", "--yes").returncode == 0
    assert run_modal(kiln, "queue", "len", name, "--total").stdout.strip() == "0"
    deleted = run_modal(kiln, "queue", "delete", name, "--yes")
    assert deleted.returncode == 0, _output(deleted)
    missing = run_modal(kiln, "queue", "len", name)
    assert missing.returncode != 0 and "not found" in _output(missing), _output(missing)


WRITE = """
import modal, sys
q = modal.Queue.from_name(sys.argv[1], create_if_missing=True)
q.put_many(list(range(10)))
q.put("p", partition="p")
print("queued")
"""

READ = """
import modal, sys
q = modal.Queue.from_name(sys.argv[1])
print("items", q.get_many(20, block=False), q.get(block=False, partition="p"))
"""


@pytest.mark.timeout(120)
def test_acknowledged_items_survive_kill_9(restartable_server: RestartableServer) -> None:
    name = _name()
    written = run_client(restartable_server.server, WRITE, name)
    assert "queued" in written.stdout, _output(written)
    restartable_server.kill_9()
    restartable_server.restart()
    read = run_client(restartable_server.server, READ, name)
    assert read.returncode == 0, _output(read)
    assert "items [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] p" in read.stdout
