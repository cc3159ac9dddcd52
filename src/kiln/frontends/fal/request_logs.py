"""What a queued fal request's runner printed while it ran, as fal's status API lists it
(`GET …/requests/<id>/status?logs=1`: `{"message", "level", "source", "timestamp"}` items).

kiln keeps each runner's output in its app's log stream, tagged with the runner's task; a request's
lines are those its runner printed between the moment it took the request and the moment it
answered. A runner that serves several requests at once (`max_multiplexing` > 1) interleaves
their lines, and each of those requests lists all of them: the runner's output carries no request
ID to tell them apart. fal's default (one request per runner) attributes every line exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from kiln.streams import STDERR, LogBuffer, LogEntry

MAX_LINES = 1000  # per request: the last ones are kept


@dataclass
class RunnerOutput:
    """A request's view of its runner's output, from when the runner took it."""

    logs: LogBuffer
    task_id: str
    cursor: int  # the app's log entries read so far (each is read once, however often one asks)
    mine: list[LogEntry] = field(default_factory=list)  # those of its runner

    @classmethod
    def from_now(cls, logs: LogBuffer, task_id: str) -> RunnerOutput:
        return cls(logs, task_id, logs.last_id)

    def items(self) -> list[dict[str, str]]:
        new = self.logs.after(self.cursor)
        if new:
            self.cursor = new[-1].entry_id
            self.mine.extend(e for e in new if e.task_id == self.task_id)
        return log_items(self.mine)


def log_items(entries: list[LogEntry], max_lines: int = MAX_LINES) -> list[dict[str, str]]:
    """fal's log items for output chunks, one per line (a line split across chunks is joined;
    each keeps the time its first chunk came), the last `max_lines` of them."""
    items: list[dict[str, str]] = []
    pending: dict[int, tuple[str, float]] = {}  # per stream: a line not ended yet, and its time
    for entry in entries:
        text, started = pending.pop(entry.fd, ("", entry.timestamp))
        lines = (text + entry.data).split("\n")
        for line in lines[:-1]:
            items.append(_item(line, entry.fd, started))
            started = entry.timestamp
        if lines[-1]:
            pending[entry.fd] = (lines[-1], started)
    for fd, (line, started) in pending.items():
        items.append(_item(line, fd, started))
    return items[-max_lines:]


def _item(line: str, fd: int, timestamp: float) -> dict[str, str]:
    return {
        "message": line.rstrip("\r"),
        "level": "STDERR" if fd == STDERR else "STDOUT",
        "source": "USER",
        "timestamp": datetime.fromtimestamp(timestamp, timezone.utc).isoformat(),
    }
