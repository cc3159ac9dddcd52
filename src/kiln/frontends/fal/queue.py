"""fal's queue API on the queue host: submit a request, poll its status, fetch its result, cancel.

    POST /<owner>/<app>/<path>                  → {request_id, response_url, status_url, cancel_url}
    GET  /<owner>/<app>/requests/<id>/status    → 202 IN_QUEUE (with queue_position) | 202
                                                  IN_PROGRESS | 200 COMPLETED (with ?logs=1: the runner's lines)
    GET  /<owner>/<app>/requests/<id>/status/stream  the same, as server-sent events, until done
    GET  /<owner>/<app>/requests/<id>           → the runner's status code, headers and body
    PUT  /<owner>/<app>/requests/<id>/cancel    → 202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED

No acknowledged request is lost: a submit is answered once the request is stored
(`storage/fal_requests.py`, credentials stripped), and its moves to IN_PROGRESS and COMPLETED
(with the response) are stored as they happen. Each waits in the app's server pool for a runner
with room, as long as the runners stay busy (the pool sees the whole backlog, so runners start
for it, up to the app's limits); waiters are served in the order they came, and `queue_position`
is the number of the app's requests submitted earlier that still wait.

After a restart (`restore`), the unfinished requests of a still-deployed app run again in
submission order — one interrupted mid-run runs again from the start: at least once, as fal's
own queue. Those of an app that is gone, and those of a `fal run` app (ephemeral: it ends with
the server that ran it), finish as errors whose message says why (410). Finished responses are
kept `KEEP` seconds after they finish, then removed from disk too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import sqlite3
import time
import urllib.parse
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from kiln.core.apps import AppState
from kiln.core.core import Core
from kiln.errors import KilnError, NotFound
from kiln.frontends.fal.keys import FalAuth
from kiln.frontends.fal.request_logs import RunnerOutput
from kiln.frontends.fal.routes import FalHost, FalRoutes, Refusal, Route
from kiln.gateway.proxy import Upstream
from kiln.gateway.types import Receive, Scope, Send
from kiln.ids import new_id
from kiln.storage.fal_requests import COMPLETED, IN_PROGRESS, IN_QUEUE, FalRequest, FalRequests, FalResponse

MAX_BODY = 64 * 2**20  # bytes of a queued request's body
KEEP = 3600.0  # seconds a finished request's result is kept
_EXPIRY_EVERY = 10.0  # seconds between removals of expired results
log = logging.getLogger(__name__)


@dataclass
class QueuedRequest:
    """An unfinished request of this server: its stored record and the task that runs it."""

    record: FalRequest
    work: asyncio.Task[None] | None = None
    output: RunnerOutput | None = None  # its runner's lines, once a runner has it
    cancelled: bool = False  # by its caller (a stopping server's cancel leaves it to the next one)
    finishing: bool = False  # its response is being stored: too late to cancel


def why_not_resumed(app_path: str, state: AppState | None) -> str:
    """Why an unfinished request found at start cannot run again ('' when it can: its app is
    still deployed). `state` is its app's, None when the app no longer runs here."""
    if state == AppState.DEPLOYED:
        return ""
    if state is None:
        return (
            f"The fal app {app_path} was deleted or stopped before this request finished; deploy it "
            "(`fal deploy`) and submit the request again."
        )
    return (
        f"This request was for `fal run` of {app_path}, which ended when the kiln server restarted: "
        "a `fal run` app's requests end with it. Deploy the app (`fal deploy`) for queue requests "
        "that outlive a restart, and submit the request again."
    )


class FalQueue(FalHost):
    """The ASGI app of the queue host."""

    def __init__(
        self, core: Core, routes: FalRoutes, upstream: Upstream, auth: FalAuth, store: FalRequests
    ) -> None:
        super().__init__(core, routes, upstream, auth)
        self.store = store
        self.live: dict[str, QueuedRequest] = {}  # unfinished requests; finished ones are in the store
        self._closing = False
        self._expired_at = 0.0

    def restore(self) -> tuple[int, int]:
        """Once, before serving: run the unfinished requests of deployed apps again, in submission
        order, and finish the others as errors that say why. Returns (run again, ended)."""
        self.store.sweep()
        self.store.expire(KEEP)
        resumed = ended = 0
        for record in self.store.unfinished():
            reason = why_not_resumed(record.app_path, self._app_state(record.function_id))
            if reason:
                self.store.finish(record.request_id, FalResponse.failure(410, reason))
                ended += 1
                continue
            if record.status != IN_QUEUE:  # interrupted mid-run: it runs again from the start
                self.store.set_status(record.request_id, IN_QUEUE)
                record.status = IN_QUEUE
            self._start(record)
            resumed += 1
        return resumed, ended

    def _app_state(self, function_id: str) -> AppState | None:
        try:
            return self.core.app(self.core.function(function_id).app_id).state
        except NotFound:
            return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self._expire()
        admitted = self.admit(scope)
        if isinstance(admitted, Refusal):
            await _json(send, admitted.status, {"detail": admitted.reason})
            return
        route, rest = admitted
        app_path = scope["path"].lstrip("/").split("/", 2)[:2]
        base = f"{self.routes.queue_url}/{'/'.join(app_path)}"
        parts = rest.strip("/").split("/")
        if parts[0] == "requests" and len(parts) >= 2:
            await self._about(scope, send, route, parts[1], parts[2:], base)
        elif scope["method"] == "POST":
            await self._submit(scope, receive, send, route, "/".join(app_path), rest, base)
        else:
            await _json(send, 405, {"detail": "Submit with POST; read requests at …/requests/<id>"})

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, route: Route, app_path: str, path: str, base: str
    ) -> None:
        if self._closing:
            await _json(send, 503, {"detail": "This kiln server is stopping; submit again once it is back"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _json(send, 413, {"detail": f"The request body is over {MAX_BODY} bytes"})
                return
            if not message.get("more_body"):
                break
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in scope.get("headers", [])
        ]
        record = FalRequest(new_id("rq"), route.function_id, app_path, path, "POST", headers)
        try:  # stored (credentials stripped) before the caller has the ID
            await asyncio.to_thread(self.store.add, record, bytes(body))
        except (OSError, sqlite3.Error) as exc:
            log.exception("could not store fal queue request %s", record.request_id)
            detail = (
                f"kiln could not store the request ({exc}); check the disk under KILN_HOME, then submit again"
            )
            await _json(send, 503, {"detail": detail})
            return
        self._start(record)
        document = {**self._urls(record.request_id, base), "status": IN_QUEUE}
        await _json(send, 200, {**document, "queue_position": self._position(record)})

    def _start(self, record: FalRequest) -> None:
        if self._closing:  # stored, but the server stops: it stays IN_QUEUE for the next one
            return
        request = QueuedRequest(record)
        self.live[record.request_id] = request
        request.work = asyncio.ensure_future(self._run(request))

    async def _run(self, request: QueuedRequest) -> None:
        record = request.record
        try:
            body = await asyncio.to_thread(self.store.body, record.request_id)
            server = self.core.server(record.function_id)
            # Queued: it waits as long as the app's runners stay busy (its place is kept), and a
            # runner must still become ready within the startup timeout.
            async with server.request(queue_when_full=True, wait=math.inf) as task:
                assert task.http_address is not None
                self.store.set_status(record.request_id, IN_PROGRESS)
                request.output = RunnerOutput.from_now(
                    self.core.app_logs(server.function.app_id), task.task_id
                )
                record.status = IN_PROGRESS
                try:  # request_timeout bounds the request once a runner has it, as on the run host
                    async with asyncio.timeout(server.function.timeout):
                        headers = [*record.headers, ("x-fal-request-id", record.request_id)]
                        answer = await self.forward(
                            task.http_address, record.method, record.path, headers, body
                        )
                        result = FalResponse(*answer)
                except TimeoutError:
                    result = FalResponse.failure(
                        504,
                        f"The request ran past the app's request_timeout of {server.function.timeout:g} s",
                    )
        except (KilnError, aiohttp.ClientError) as exc:
            status = 503 if isinstance(exc, KilnError) else 502
            result = FalResponse.failure(status, str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            if not request.cancelled:
                raise  # the server is stopping: the request stays unfinished for the next one
            result = FalResponse.failure(499, "The request was cancelled.")
        except Exception as exc:  # a kiln bug, or its disk: the caller still gets an answer
            log.exception("fal queue request %s failed", record.request_id)
            result = FalResponse.failure(
                500, f"kiln could not run the request ({type(exc).__name__}); see its log"
            )
        request.finishing = True
        if request.output is not None:
            result = dataclasses.replace(result, logs=request.output.items())
        try:
            finished = asyncio.to_thread(self.store.finish, record.request_id, result)
            await asyncio.shield(finished)
        except (OSError, sqlite3.Error):  # it stays unfinished on disk: the next server runs it again
            log.exception("could not store the response of fal queue request %s", record.request_id)
        finally:
            record.status = COMPLETED
            self.live.pop(record.request_id, None)

    async def _about(
        self, scope: Scope, send: Send, route: Route, request_id: str, what: list[str], base: str
    ) -> None:
        live = self.live.get(request_id)
        record = live.record if live is not None else self.store.get(request_id)
        if record is None or record.function_id != route.function_id:  # only through its own app's URL
            await _json(
                send, 404, {"detail": f"Request {request_id} not found (results are kept {KEEP:g} s)"}
            )
            return
        if what == ["status"] and scope["method"] == "GET":
            document = self._status(record, base, _wants_logs(scope))
            await _json(send, 200 if record.status == COMPLETED else 202, document)
        elif what == ["status", "stream"] and scope["method"] == "GET":
            await self._stream_status(send, record, base, _wants_logs(scope))
        elif what == ["cancel"] and scope["method"] == "PUT":
            if live is None or live.finishing:
                await _json(send, 400, {"status": "ALREADY_COMPLETED"})
                return
            live.cancelled = True
            if live.work is not None:
                live.work.cancel()
            await _json(send, 202, {"status": "CANCELLATION_REQUESTED"})
        elif not what and scope["method"] == "GET":
            response = await asyncio.to_thread(self.store.response, request_id)
            if response is None:
                await _json(send, 400, {"detail": "Request is still in progress", "status": record.status})
                return
            headers = [(k.encode(), v.encode()) for k, v in response.headers]
            headers += [(b"content-length", str(len(response.body)).encode()),
                        (b"x-fal-request-id", request_id.encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body})
        else:
            await _json(
                send, 405, {"detail": "Use GET …/status, GET …/status/stream, GET …, or PUT …/cancel"}
            )

    async def _stream_status(self, send: Send, record: FalRequest, base: str, logs: bool) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = ""
        while True:
            if record.status == COMPLETED:  # its error, if any, is in the stored record
                stored = self.store.get(record.request_id)  # (not if storing it failed)
                record = stored if stored is not None and stored.status == COMPLETED else record
            document = json.dumps(self._status(record, base, logs))
            if document != last:
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"data: {document}\n\n".encode(),
                        "more_body": True,
                    }
                )
                last = document
            if record.status == COMPLETED:
                break
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})

    def _status(self, record: FalRequest, base: str, logs: bool = False) -> dict[str, Any]:
        """fal's status document; with `logs`, what the runner printed for the request so far
        (the key is always there: fal's client reads it; null when not asked for)."""
        document: dict[str, Any] = {"status": record.status, "request_id": record.request_id, "logs": None}
        if logs:
            live = self.live.get(record.request_id)
            output = live.output if live is not None else None
            document["logs"] = output.items() if output is not None else record.logs
        document.update(self._urls(record.request_id, base))
        if record.status == IN_QUEUE:
            document["queue_position"] = self._position(record)
        if record.status == COMPLETED and record.error:
            document["error"] = record.error
        return document

    def _urls(self, request_id: str, base: str) -> dict[str, str]:
        at = f"{base}/requests/{request_id}"
        return {"request_id": request_id, "response_url": at, "status_url": f"{at}/status",
                "cancel_url": f"{at}/cancel"}  # fmt: skip

    def _position(self, record: FalRequest) -> int:
        """How many of its app's requests, submitted before it, still wait for a runner."""
        return sum(
            1
            for r in self.live.values()
            if r.record.status == IN_QUEUE
            and r.record.function_id == record.function_id
            and r.record.seq < record.seq
        )

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self._expired_at >= _EXPIRY_EVERY:
            self._expired_at = now
            self.store.expire(KEEP)

    async def shutdown(self) -> None:
        """Stop running requests and leave them unfinished in the store: the next server on this
        KILN_HOME runs them again. (Before the core stops its runners, which would fail them.)"""
        self._closing = True
        works = [r.work for r in self.live.values() if r.work is not None]
        for request in self.live.values():
            if request.work is not None and not request.finishing:
                request.work.cancel()
        await asyncio.gather(*works, return_exceptions=True)


async def _json(send: Send, status: int, document: MutableMapping[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _wants_logs(scope: Scope) -> bool:
    """`?logs=1` (fal_client sends `logs=true`)."""
    values = urllib.parse.parse_qs(scope.get("query_string", b"").decode(errors="replace")).get("logs", [])
    return bool(values) and values[-1].lower() in ("1", "true", "yes")
