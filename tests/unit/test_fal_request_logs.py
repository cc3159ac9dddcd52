"""A queued fal request's log items: its runner's lines from when it took the request, whole
lines across output chunks, stdout and stderr apart, the last ones kept."""

from __future__ import annotations

from kiln.frontends.fal.request_logs import RunnerOutput, log_items
from kiln.streams import STDERR, STDOUT, LogBuffer, LogEntry


def test_lines_are_joined_across_chunks_and_keep_their_stream_and_first_time() -> None:
    entries = [
        LogEntry(1, "loading mo", STDOUT, 10.0),
        LogEntry(2, "oops\n", STDERR, 11.0),
        LogEntry(3, "del\ndone\nhalf", STDOUT, 12.0),
    ]
    items = log_items(entries)
    assert [(i["message"], i["level"]) for i in items] == [
        ("oops", "STDERR"),
        ("loading model", "STDOUT"),
        ("done", "STDOUT"),
        ("half", "STDOUT"),
    ]
    assert items[1]["timestamp"].startswith("1970-01-01T00:00:10")  # when the line began
    assert items[2]["timestamp"].startswith("1970-01-01T00:00:12")
    assert all(i["source"] == "USER" for i in items)
    assert [i["message"] for i in log_items(entries, max_lines=2)] == ["done", "half"]


def test_a_request_sees_only_its_runners_lines_printed_after_it_took_the_request() -> None:
    logs = LogBuffer()
    logs.append("before\n", STDOUT, task_id="ta-runner")
    output = RunnerOutput.from_now(logs, "ta-runner")
    logs.append("other runner\n", STDOUT, task_id="ta-other")
    logs.append("mine\n", STDOUT, task_id="ta-runner")
    assert [i["message"] for i in output.items()] == ["mine"]
    assert RunnerOutput.from_now(LogBuffer(), "ta-x").cursor == 0
