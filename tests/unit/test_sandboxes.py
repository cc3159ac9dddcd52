"""The sandbox owner's decisions (expiry, how an end is called, tag filters), its journal, and
the stdio primitives (output by offset, stdin by offset)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kiln.containers import ExitStatus
from kiln.core.results import Status
from kiln.core.sandbox_records import expired, result_of, tags_match, to_forget
from kiln.core.sandboxes import RESTARTED, Sandboxes
from kiln.core.stdio import OutputLog, StdinClosed, StdinPipe
from kiln.errors import InvalidRequest, NotFound
from kiln.storage.state import StateStore


def test_a_sandbox_expires_at_its_timeout_whatever_it_does() -> None:
    assert expired(now=100, started=0, timeout=100, last_active=99, idle_timeout=0, busy=True) == "timeout"
    assert expired(now=99, started=0, timeout=100, last_active=0, idle_timeout=0, busy=False) == ""


def test_a_sandbox_is_idle_only_with_no_exec_running_and_no_stdio() -> None:
    assert expired(now=50, started=0, timeout=300, last_active=40, idle_timeout=10, busy=False) == "idle"
    assert expired(now=50, started=0, timeout=300, last_active=40, idle_timeout=10, busy=True) == ""
    assert expired(now=50, started=0, timeout=300, last_active=45, idle_timeout=10, busy=False) == ""
    assert expired(now=50, started=0, timeout=300, last_active=0, idle_timeout=0, busy=False) == ""


def test_how_a_sandbox_ended_is_named_by_who_ended_it_first() -> None:
    killed = ExitStatus(code=None, signal=9)
    assert result_of(killed, "timeout", 5, 0).status == Status.TIMEOUT
    assert "idle_timeout of 2 s" in result_of(killed, "idle", 5, 2).message
    assert result_of(killed, "terminated", 5, 0) == result_of(killed, "terminated", 5, 0)
    assert result_of(killed, "terminated", 5, 0).exitcode == 137
    assert result_of(ExitStatus(code=0, signal=None), "", 5, 0).status == Status.SUCCESS
    failed = result_of(ExitStatus(code=3, signal=None), "", 5, 0)
    assert (failed.status, failed.exitcode) == (Status.FAILURE, 3)
    assert result_of(ExitStatus(code=None, signal=11), "", 5, 0).exitcode == 139
    assert "memory" in result_of(ExitStatus(code=None, signal=9, oom_killed=True), "", 5, 0).message


def test_tags_filter_keeps_sandboxes_with_at_least_those_tags() -> None:
    assert tags_match({"a": "1", "b": "2"}, {"a": "1"})
    assert not tags_match({"a": "1"}, {"a": "2"})
    assert tags_match({}, {})


def test_sandboxes_of_a_server_that_stopped_say_so(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite3")
    state.execute(
        "INSERT INTO sandboxes (id, app_id, environment, name, task_id, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("sb-x", "ap-a", "", "n", "ta-xV", '{"tags": {"k": "v"}}', 1.0),
    )
    sandboxes = Sandboxes(state)
    assert sandboxes.info("sb-x").result is None
    sandboxes.restore()
    info = sandboxes.info("sb-x")
    assert info.result is not None and info.result.message == RESTARTED and info.tags == {"k": "v"}
    with pytest.raises(NotFound, match="restarted"):
        sandboxes.live("sb-x")
    assert sandboxes.list(app_id="ap-a") == []
    assert [i.sandbox_id for i in sandboxes.list(app_id="ap-a", include_finished=True)] == ["sb-x"]
    assert sandboxes.by_name("ap-a", "n", include_terminated=True).sandbox_id == "sb-x"
    with pytest.raises(NotFound):
        sandboxes.by_name("ap-a", "n")


async def _collect(log: OutputLog, offset: int) -> list[tuple[int, bytes]]:
    return [chunk async for chunk in log.read(offset)]


def test_output_is_read_by_offset_until_the_process_closes_it() -> None:
    async def scenario() -> None:
        log = OutputLog()
        reader = asyncio.ensure_future(_collect(log, 0))
        log.append(b"abc")
        await asyncio.sleep(0)
        log.append(b"def")
        log.close()
        assert b"".join(data for _, data in await reader) == b"abcdef"
        assert await _collect(log, 4) == [(4, b"ef")]  # a reader resumes where it left off

    asyncio.run(scenario())


def test_output_keeps_its_tail_and_says_where_it_starts() -> None:
    async def scenario() -> None:
        log = OutputLog(max_bytes=4)
        log.append(b"012345")
        log.close()
        assert await _collect(log, 0) == [(2, b"2345")]

    asyncio.run(scenario())


class _Writer:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_stdin_applies_a_resent_write_once_and_refuses_a_gap() -> None:
    async def scenario() -> None:
        writer = _Writer()
        stdin = StdinPipe(writer)
        await stdin.write(0, b"hello", False)
        await stdin.write(0, b"hello", False)  # lost acknowledgement: the same bytes again
        await stdin.write(3, b"lo world", False)
        assert writer.data == b"hello world"
        with pytest.raises(InvalidRequest, match="offset 20"):
            await stdin.write(20, b"x", False)
        await stdin.write(11, b"", True)
        assert writer.closed and stdin.closed
        with pytest.raises(StdinClosed):
            await stdin.write(11, b"more", False)

    asyncio.run(scenario())


def test_exec_output_never_drops_bytes_and_its_writer_waits_for_the_reader() -> None:
    async def scenario() -> None:
        log = OutputLog(max_bytes=4, backpressure=True)
        log.append(b"0123")
        log.append(b"4567")  # (what was already read from the process is kept, not dropped)
        writer = asyncio.ensure_future(log.room())
        await asyncio.sleep(0)
        assert not writer.done()  # 8 unread bytes, over the limit: the writer waits
        reader = log.read(0)
        assert await reader.__anext__() == (0, b"01234567")
        following = asyncio.ensure_future(reader.__anext__())  # the reader asks from offset 8
        await asyncio.sleep(0)
        await asyncio.wait_for(writer, 1)
        log.close()
        with pytest.raises(StopAsyncIteration):
            await following

    asyncio.run(scenario())


def test_ended_sandboxes_keep_their_output_for_a_while_and_a_bounded_number() -> None:
    ended = [("old", 0.0), ("recent", 900.0), ("newest", 950.0)]
    assert to_forget(ended, now=1000.0, keep_seconds=600, keep_count=10) == ["old"]
    assert to_forget(ended, now=1000.0, keep_seconds=600, keep_count=1) == ["recent", "old"]
    assert to_forget([], now=0.0, keep_seconds=600, keep_count=1) == []


def test_records_of_sandboxes_that_ended_long_ago_are_forgotten(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite3")
    for sandbox_id, ended_at in (("sb-old", 100.0), ("sb-new", 900.0), ("sb-live", 0.0)):
        state.execute(
            "INSERT INTO sandboxes (id, app_id, environment, task_id, data, created_at, ended_at) "
            "VALUES (?, 'ap-a', '', ?, '{}', 1.0, ?)",
            (sandbox_id, sandbox_id + "-task", ended_at),
        )
    Sandboxes(state).expire(before=500.0)
    assert [r[0] for r in state.query("SELECT id FROM sandboxes ORDER BY id")] == ["sb-live", "sb-new"]
