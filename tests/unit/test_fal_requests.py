"""fal's durable queue requests (`storage/fal_requests.py`) on a real SQLite database: what a
submit stored comes back after the store is opened again, large bodies live in files, finished
results expire from disk, and no credential is ever written."""

from __future__ import annotations

from pathlib import Path

from kiln.core.apps import AppState
from kiln.frontends.fal.queue import why_not_resumed
from kiln.storage.fal_requests import (
    COMPLETED,
    IN_PROGRESS,
    IN_QUEUE,
    FalRequest,
    FalRequests,
    FalResponse,
    stored_headers,
)
from kiln.storage.state import StateStore
from kiln.testing import FakeClock

SECRET = "ak-kid:as-very-secret"


def open_store(tmp_path: Path, clock: FakeClock, inline_max: int = 1024) -> FalRequests:
    return FalRequests(StateStore(tmp_path / "state.sqlite3"), tmp_path / "fal-requests", clock, inline_max)


def request(request_id: str, function_id: str = "fu-a") -> FalRequest:
    headers = [("Authorization", f"Key {SECRET}"), ("content-type", "application/json"), ("host", "q")]
    return FalRequest(request_id, function_id, "kiln/app", "/", "POST", headers)


def test_submitted_requests_come_back_in_submission_order_with_bodies_large_and_small(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = open_store(tmp_path, clock)
    large = b"x" * 5000
    for n, body in enumerate([b'{"n": 0}', large, b'{"n": 2}']):
        store.add(request(f"rq-{n}", "fu-b" if n == 1 else "fu-a"), body)
        clock.advance(1)
    store.set_status("rq-0", IN_PROGRESS)
    store.state.close()  # a crash: nothing else is flushed or closed

    again = open_store(tmp_path, clock)
    unfinished = again.unfinished()
    assert [(r.request_id, r.status, r.function_id) for r in unfinished] == [
        ("rq-0", IN_PROGRESS, "fu-a"),
        ("rq-1", IN_QUEUE, "fu-b"),
        ("rq-2", IN_QUEUE, "fu-a"),
    ]
    assert [r.seq for r in unfinished] == sorted(r.seq for r in unfinished)
    assert unfinished[0].submitted_at == 1000.0
    assert again.body("rq-0") == b'{"n": 0}' and again.body("rq-1") == large
    assert (tmp_path / "fal-requests" / "rq-1.request").read_bytes() == large  # a file, not a row
    assert not (tmp_path / "fal-requests" / "rq-0.request").exists()
    assert again.response("rq-0") is None  # not finished


def test_a_stored_request_holds_no_credential(tmp_path: Path) -> None:
    store = open_store(tmp_path, FakeClock())
    submitted = request("rq-1")
    submitted.headers += [("Cookie", "session=abc"), ("x-user", "kept")]
    store.add(submitted, b"y" * 5000)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]  # the database, its WAL, bodies
    assert {p.name for p in files} >= {"state.sqlite3", "state.sqlite3-wal", "rq-1.request"}
    for path in files:
        data = path.read_bytes()
        assert SECRET.encode() not in data and b"session=abc" not in data, path
    stored = store.get("rq-1")
    assert stored is not None
    assert stored.headers == [("content-type", "application/json"), ("x-user", "kept")]


def test_stored_headers_drop_credentials_and_the_connections_own_in_any_case() -> None:
    headers = [
        ("AUTHORIZATION", "Key a:b"),
        ("proxy-authorization", "Basic x"),
        ("x-fal-cdn-token", "t"),
        ("Content-Length", "3"),
        ("x-fal-request-timeout", "30"),
        ("Content-Type", "application/json"),
    ]
    assert stored_headers(headers) == [("x-fal-request-timeout", "30"), ("Content-Type", "application/json")]


def test_a_finished_response_is_kept_then_expires_from_disk(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_store(tmp_path, clock)
    store.add(request("rq-big"), b"b" * 5000)
    store.add(request("rq-small"), b"{}")
    logs = [{"message": "loading", "level": "STDOUT", "source": "USER", "timestamp": "t"}]
    big = FalResponse(200, [("content-type", "application/json")], b"r" * 5000, logs=logs)
    assert store.finish("rq-big", big) == 1000.0
    clock.advance(10)
    store.finish("rq-small", FalResponse.failure(503, "no runner"))
    assert store.unfinished() == []
    assert store.response("rq-big") == big  # with the runner's lines
    stored = store.get("rq-big")
    assert stored is not None and stored.logs == logs
    small = store.get("rq-small")
    assert small is not None and small.status == COMPLETED and small.error == "no runner"
    assert store.response("rq-small") == FalResponse(
        503, [("content-type", "application/json")], b'{"detail": "no runner"}', "no runner"
    )
    assert sorted(p.name for p in store.root.iterdir()) == ["rq-big.request", "rq-big.response"]

    clock.advance(3595)  # rq-big finished 3605 s ago, rq-small 3595 s ago
    assert store.expire(3600) == 1
    assert store.get("rq-big") is None and list(store.root.iterdir()) == []
    assert store.get("rq-small") is not None
    clock.advance(10)
    assert store.expire(3600) == 1 and store.get("rq-small") is None


def test_a_finished_request_keeps_its_status_and_only_unfinished_ones_move(tmp_path: Path) -> None:
    store = open_store(tmp_path, FakeClock())
    store.add(request("rq-1"), b"{}")
    store.finish("rq-1", FalResponse.failure(499, "The request was cancelled."))
    store.set_status("rq-1", IN_PROGRESS)  # a late move of a cancelled request
    finished = store.get("rq-1")
    assert finished is not None and finished.status == COMPLETED


def test_a_sweep_removes_the_files_a_crash_left_without_a_row(tmp_path: Path) -> None:
    store = open_store(tmp_path, FakeClock())
    store.add(request("rq-kept"), b"k" * 5000)
    store.add(request("rq-done"), b"d" * 5000)
    store.finish("rq-done", FalResponse(200, [], b"o" * 5000))
    for orphan in ("rq-lost.request", "rq-kept.response", ".tmp-half"):
        (store.root / orphan).write_bytes(b"?")
    assert store.sweep() == 3
    assert sorted(p.name for p in store.root.iterdir()) == [
        "rq-done.request",
        "rq-done.response",
        "rq-kept.request",
    ]


def test_only_a_deployed_apps_requests_run_again_after_a_restart() -> None:
    assert why_not_resumed("kiln/app", AppState.DEPLOYED) == ""
    gone = why_not_resumed("kiln/app", None)
    assert "kiln/app was deleted or stopped" in gone and "fal deploy" in gone
    ephemeral = why_not_resumed("kiln/app", AppState.EPHEMERAL)
    assert "`fal run` of kiln/app" in ephemeral and "ended when the kiln server restarted" in ephemeral
    assert "fal deploy" in ephemeral
