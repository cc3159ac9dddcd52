"""The journal: calls, inputs and outputs written ahead, read back after a crash."""

from __future__ import annotations

from pathlib import Path

from kiln.core.calls import Calls, Invocation
from kiln.core.functions import RetryPolicy
from kiln.core.journal import Journal
from kiln.core.results import Result, Status
from kiln.storage.state import StateStore


def _calls(path: Path) -> tuple[Calls, Journal]:
    journal = Journal(StateStore(path))
    return Calls(log=journal), journal


def test_an_acknowledged_input_is_read_back_unfinished_and_a_finished_one_with_its_output(
    tmp_path: Path,
) -> None:
    calls, _ = _calls(tmp_path / "state.sqlite3")
    call = calls.create("fu-1", "ap-1", Invocation.ASYNC, is_map=True, retry=RetryPolicy(retries=2))
    first, second, third = calls.put_inputs(call, [(i, f"in{i}".encode(), "", False) for i in range(3)])
    calls.complete(second.input_id, Result(Status.SUCCESS, payload=b"out1"))

    # A new process on the same database (the first one was killed: nothing was closed).
    _, journal = _calls(tmp_path / "state.sqlite3")
    assert journal.unfinished_call_ids() == [call.call_id]
    stored = journal.load_call(call.call_id)
    assert stored is not None
    assert [i.input_id for i in stored.pending] == [first.input_id, third.input_id]
    assert [i.payload for i in stored.pending] == [b"in0", b"in2"]
    (output,) = stored.call.outputs
    assert (output.input_id, output.idx, output.result.payload) == (second.input_id, 1, b"out1")
    assert stored.call.invocation == Invocation.ASYNC and stored.call.is_map
    assert stored.call.retry.retries == 2
    assert (stored.call.num_inputs, stored.call.unfinished) == (3, 2)


def test_outputs_keep_their_order_so_a_callers_cursor_stays_valid(tmp_path: Path) -> None:
    calls, journal = _calls(tmp_path / "state.sqlite3")
    call = calls.create("fu-1", "ap-1", Invocation.SYNC, is_map=True)
    items = calls.put_inputs(call, [(i, b"", "", False) for i in range(5)])
    for item in reversed(items):
        calls.complete(item.input_id, Result(Status.SUCCESS, payload=str(item.idx).encode()))
    stored = journal.load_call(call.call_id)
    assert stored is not None
    assert [o.idx for o in stored.call.outputs] == [o.idx for o in call.outputs] == [4, 3, 2, 1, 0]
    assert journal.unfinished_call_ids() == []


def test_a_re_sent_input_gives_back_the_input_made_the_first_time(tmp_path: Path) -> None:
    calls, journal = _calls(tmp_path / "state.sqlite3")
    call = calls.create("fu-1", "ap-1", Invocation.SYNC, is_map=True)
    (first,) = calls.put_inputs(call, [(0, b"x", "", False)])
    # The client lost the acknowledgement (the server died) and sends the same idx again,
    # to this server or to the next one.
    (again,) = calls.put_inputs(call, [(0, b"x", "", False)])
    assert again.input_id == first.input_id
    stored = journal.load_call(call.call_id)
    assert stored is not None
    restored = Calls()
    restored.restore(stored.call, stored.pending)
    (after_restart,) = restored.put_inputs(stored.call, [(0, b"x", "", False)])
    assert after_restart.input_id == first.input_id
    assert stored.call.num_inputs == 1


def test_expired_calls_are_forgotten_and_recent_ones_kept(tmp_path: Path) -> None:
    calls, journal = _calls(tmp_path / "state.sqlite3")
    old = calls.create("fu-1", "ap-1", Invocation.SYNC, is_map=False)
    calls.put_inputs(old, [(0, b"", "", False)])
    journal.state.execute("UPDATE calls SET created_at = 1 WHERE call_id = ?", (old.call_id,))
    recent = calls.create("fu-1", "ap-1", Invocation.SYNC, is_map=False)
    assert journal.expire_calls(before=2) == 1
    assert journal.load_call(old.call_id) is None
    assert journal.load_call(recent.call_id) is not None


def test_stopped_apps_that_were_never_deployed_expire_and_deployed_ones_stay(tmp_path: Path) -> None:
    from kiln.core.apps import App, AppState

    journal = Journal(StateStore(tmp_path / "state.sqlite3"))
    run = App("ap-run", "run", AppState.STOPPED, stopped_at=10.0)
    deployed = App("ap-dep", "svc", AppState.STOPPED, name="svc", version=2, stopped_at=10.0)
    recent = App("ap-new", "run", AppState.STOPPED, stopped_at=100.0)
    for app in (run, deployed, recent):
        journal.save_app(app)
    assert journal.expire_apps(before=50.0) == ["ap-run"]
    assert sorted(a.app_id for a in journal.load_apps()) == ["ap-dep", "ap-new"]


def test_a_call_made_not_durable_leaves_nothing_in_the_journal(tmp_path: Path) -> None:
    calls, journal = _calls(tmp_path / "state.sqlite3")
    call = calls.create("fu-1", "ap-1", Invocation.SYNC, is_map=False, durable=False)
    (item,) = calls.put_inputs(call, [(0, b"scope", "", False)])
    calls.complete(item.input_id, Result(Status.SUCCESS, payload=b"done"))
    assert journal.load_call(call.call_id) is None
    assert [o.result.payload for o in call.outputs] == [b"done"]
