"""fal's queue requests, durable: what was submitted, how far it got, and what the runner answered.

Each write is committed before the method returns, so the queue host answers a submit only once
the request is on disk (a `kill -9` loses nothing it acknowledged). A request's body and its
response's body live in its row up to `inline_max` bytes; a larger one is a file of its own,
`<root>/<request_id>.request` or `.response`, written atomically *before* the row that names it
and removed *after* the row is gone: a crash between the two leaves an orphan file, which
`sweep()` removes, never a row without its body.

Credentials are never stored: `stored_headers` keeps what the runner needs of a request's
headers and drops those that carry a caller's key (the request was authenticated when submitted).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.storage.state import StateStore

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
INLINE_MAX = 256 * 1024  # bytes of a body kept in its row; larger ones are files
# Headers that carry a caller's credentials (fal's `Authorization: Key <id>:<secret>`, cookies,
# the CDN token fal's gateway issues): dropped before a request is stored, so they never reach
# the runner of a queued request either (kiln's queue never passed `authorization` on).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-fal-cdn-token"})
# Headers of the submitting connection, meaningless for the request the runner gets later.
_CONNECTION_HEADERS = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding"})
_SUFFIXES = (".request", ".response")


def stored_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """What of a submitted request's headers is kept for its runner: all but credentials and
    the submitting connection's own."""
    dropped = CREDENTIAL_HEADERS | _CONNECTION_HEADERS
    return [(name, value) for name, value in headers if name.lower() not in dropped]


@dataclass
class FalRequest:
    """A queue request as stored (its bodies are read apart: `body`, `response_body`)."""

    request_id: str
    function_id: str  # the fal app's server function (it keeps its ID across deploys)
    app_path: str  # "<owner>/<app>", for messages
    path: str  # what the runner sees
    method: str
    headers: list[tuple[str, str]]
    seq: int = 0  # submission order, across restarts
    status: str = IN_QUEUE
    submitted_at: float = 0.0
    response_status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""  # why kiln, not the app, ended it ("" when the runner answered)
    finished_at: float = 0.0
    logs: list[dict[str, str]] = field(default_factory=list)  # its runner's lines, once finished


@dataclass(frozen=True)
class FalResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    error: str = ""
    logs: list[dict[str, str]] = field(default_factory=list)  # fal's log items: what the runner printed

    @staticmethod
    def failure(status: int, error: str) -> FalResponse:
        """A request kiln ended itself, the reason in fal's JSON error shape."""
        body = json.dumps({"detail": error}).encode()
        return FalResponse(status, [("content-type", "application/json")], body, error)


_COLUMNS = (
    "request_id, function_id, app_path, path, method, headers, seq, status, submitted_at, "
    "response_status, response_headers, error, finished_at, logs"
)


def _request_of(row: tuple[Any, ...]) -> FalRequest:
    (
        rid,
        fid,
        app_path,
        path,
        method,
        headers,
        seq,
        status,
        submitted,
        rstatus,
        rheaders,
        error,
        done,
        logs,
    ) = row
    return FalRequest(
        rid, fid, app_path, path, method, _pairs(headers), seq, status, submitted,
        rstatus, _pairs(rheaders), error, done, json.loads(logs),
    )  # fmt: skip


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in json.loads(text)]


class FalRequests:
    def __init__(
        self,
        state: StateStore,
        root: Path,
        clock: Callable[[], float] = time.time,
        inline_max: int = INLINE_MAX,
    ) -> None:
        self.state = state
        self.root = root
        self.clock = clock
        self.inline_max = inline_max
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- writing

    def add(self, request: FalRequest, body: bytes) -> None:
        """Store a submitted request (its headers as `stored_headers` leaves them); sets its
        `seq` and `submitted_at`."""
        request.headers = stored_headers(request.headers)
        request.status, request.submitted_at = IN_QUEUE, self.clock()
        inline = self._spill(request.request_id, ".request", body)
        with self.state.transaction():
            self.state.execute(
                "INSERT INTO fal_requests (request_id, function_id, app_path, path, method, headers, body, "
                "status, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.request_id, request.function_id, request.app_path, request.path,
                    request.method, json.dumps(request.headers), inline, IN_QUEUE, request.submitted_at,
                ),
            )  # fmt: skip
            request.seq = self.state.query("SELECT last_insert_rowid()")[0][0]

    def set_status(self, request_id: str, status: str) -> None:
        """IN_QUEUE ⇄ IN_PROGRESS of an unfinished request (a finished one stays finished)."""
        self.state.execute(
            "UPDATE fal_requests SET status = ? WHERE request_id = ? AND finished_at = 0",
            (status, request_id),
        )

    def finish(self, request_id: str, response: FalResponse) -> float:
        """Store the response a request ended with; returns when it finished."""
        inline = self._spill(request_id, ".response", response.body)
        finished = self.clock()
        self.state.execute(
            "UPDATE fal_requests SET status = ?, response_status = ?, response_headers = ?, "
            "response_body = ?, error = ?, finished_at = ?, logs = ? WHERE request_id = ?",
            (
                COMPLETED, response.status, json.dumps(response.headers), inline, response.error,
                finished, json.dumps(response.logs), request_id,
            ),
        )  # fmt: skip
        return finished

    def expire(self, keep: float) -> int:
        """Remove requests finished more than `keep` seconds ago, with their files; how many."""
        cutoff = self.clock() - keep
        rows = self.state.query(
            "SELECT request_id FROM fal_requests WHERE finished_at > 0 AND finished_at < ?", (cutoff,)
        )
        if not rows:
            return 0
        self.state.execute("DELETE FROM fal_requests WHERE finished_at > 0 AND finished_at < ?", (cutoff,))
        for (request_id,) in rows:
            for suffix in _SUFFIXES:
                (self.root / f"{request_id}{suffix}").unlink(missing_ok=True)
        return len(rows)

    def sweep(self) -> int:
        """Remove files no row names (a crash between a file and its row); how many."""
        spilled = {
            f"{request_id}{suffix}"
            for request_id, no_body, no_response, done in self.state.query(
                "SELECT request_id, body IS NULL, response_body IS NULL, finished_at > 0 FROM fal_requests"
            )
            for suffix, in_file in ((".request", no_body), (".response", no_response and done))
            if in_file
        }
        removed = 0
        for path in self.root.iterdir():
            if path.name not in spilled:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # --- reading

    def get(self, request_id: str) -> FalRequest | None:
        rows = self.state.query(f"SELECT {_COLUMNS} FROM fal_requests WHERE request_id = ?", (request_id,))
        return _request_of(rows[0]) if rows else None

    def unfinished(self) -> list[FalRequest]:
        """Requests not yet finished (queued or interrupted mid-run), in submission order."""
        rows = self.state.query(f"SELECT {_COLUMNS} FROM fal_requests WHERE finished_at = 0 ORDER BY seq")
        return [_request_of(row) for row in rows]

    def body(self, request_id: str) -> bytes:
        return self._read(request_id, "body", ".request")

    def response(self, request_id: str) -> FalResponse | None:
        """The response a finished request ended with (None while it is not finished)."""
        request = self.get(request_id)
        if request is None or not request.finished_at:
            return None
        body = self._read(request_id, "response_body", ".response")
        return FalResponse(
            request.response_status, request.response_headers, body, request.error, request.logs
        )

    # --- bodies

    def _spill(self, request_id: str, suffix: str, data: bytes) -> bytes | None:
        """`data` to keep in the row, or None once it is written to the request's file."""
        if len(data) <= self.inline_max:
            return data
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.root / f"{request_id}{suffix}")
        except BaseException:
            os.unlink(tmp)
            raise
        return None

    def _read(self, request_id: str, column: str, suffix: str) -> bytes:
        rows = self.state.query(f"SELECT {column} FROM fal_requests WHERE request_id = ?", (request_id,))
        if rows and rows[0][0] is not None:
            return bytes(rows[0][0])
        return (self.root / f"{request_id}{suffix}").read_bytes()
