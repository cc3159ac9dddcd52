"""Pools of servers (Modal's `@app.server`): containers that run the user's own HTTP server.

Such a container never asks for inputs. It says when its server is up (`server_ready`), and each
request is proxied to one ready container's port (forwarded to the host's loopback by the
runtime). To the autoscaler, requests are the load: those waiting for a container are queued
work, those being proxied are running work, so min/max/buffer containers, the target concurrency
and the scale-down window mean what they mean for functions. A draining server container gets
SIGTERM (its `@exit` runs) once its last request is done.

Routing is a pure function (`choose`): a request with a session key goes to the container that
rendezvous hashing picks among those with room (Modal's best-effort affinity: the same key keeps
reaching the same container while the set of containers is unchanged), any other request to the
least busy one.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from kiln.core.autoscaler import Load
from kiln.core.pool import MAX_STARTUP_FAILURES, Pool, Task
from kiln.errors import LimitExceeded, NotFound, ServerUnavailable
from kiln.ids import new_id
from kiln.streams import Changed

# Seconds a container's server has, after SIGTERM, to finish before it is killed.
STOP_GRACE = 10.0
# After MAX_STARTUP_FAILURES containers in a row ended before their server was ready, requests
# fail at once with the reason, and no container starts for this long (then one tries again).
FAILURE_BACKOFF = 10.0


def choose(tasks: Sequence[Task], max_requests: int, session: str = "") -> Task | None:
    """The ready container a request goes to, or None when none has room (`max_requests` 0:
    no limit per container)."""
    open_ = [
        t
        for t in tasks
        if t.ready and not t.draining and (not max_requests or len(t.inflight) < max_requests)
    ]
    if not open_:
        return None
    if session:
        return max(open_, key=lambda t: hashlib.sha256(f"{session}/{t.task_id}".encode()).digest())
    return min(open_, key=lambda t: (len(t.inflight), t.task_id))


@dataclass
class Session:
    """A sticky session (`@modal.sessioned()`): every request carrying its token goes to one
    container, which does not scale down while the session lives."""

    session_id: str
    token: str
    task_id: str
    idle_timeout: float
    last_active: float
    active: int = 0  # requests in flight

    def expired(self, now: float) -> bool:
        return not self.active and now - self.last_active >= self.idle_timeout


class ServerPool(Pool):
    """The containers of one server function, and the requests they are serving."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.waiting = 0  # requests waiting for a ready container
        self.changed = Changed()  # a container became ready, freed a slot or ended
        self.last_failure = ""  # why the last container ended before it was ready
        self.last_failure_at = float("-inf")  # when (pool clock)
        self.sessions: dict[str, Session] = {}  # by token

    def load(self) -> Load:
        serving = [t for t in self.tasks.values() if not t.draining]
        return Load(
            queued=self.waiting,
            running=sum(len(t.inflight) for t in serving),
            containers=len(serving),
            stopping=len(self.tasks) - len(serving),
        )

    def server_ready(self, task: Task) -> None:
        """The container's server accepts connections (it said so after its `@enter`)."""
        if not task.ready:
            task.ready = True
            task.idle_since = self.clock()
            self.startup_failures = 0
        self.changed.notify()

    @asynccontextmanager
    async def request(
        self,
        session: str = "",
        wait: float | None = None,
        pinned: Session | None = None,
        queue_when_full: bool = False,
    ) -> AsyncIterator[Task]:
        """Hold a slot on a ready container for one request (started on demand; waits up to
        the startup timeout for one to become ready). `session` is an affinity hint; a `pinned`
        session's requests go to its container only. When every container is full and no more
        may start, the request is refused (LimitExceeded), or with `queue_when_full` waits its
        turn within `wait`."""
        if pinned is not None:
            task = self._session_task(pinned)
            pinned.active += 1
        else:
            limit = self.function.startup_timeout if wait is None else wait
            task = await self._acquire(session, limit, queue_when_full)
        request_id = new_id("rq")
        task.inflight[request_id] = self.clock()
        task.idle_since = None
        try:
            yield task
        finally:
            if pinned is not None:
                pinned.active -= 1
                pinned.last_active = self.clock()
            task.inflight.pop(request_id, None)
            if not task.inflight:
                task.idle_since = self.clock()
                if task.draining:
                    self._stop(task)
            self.changed.notify()
            self.reconcile()

    async def _acquire(self, session: str, wait: float, queue_when_full: bool = False) -> Task:
        """A ready container with room. `wait` bounds waiting on a busy pool (every container
        full, no more may start: math.inf waits as long as it stays busy); while the pool has
        room, a container must become ready within `wait` and the startup timeout, counted from
        when the room appeared."""
        deadline = self.clock() + wait
        room_since = self.clock()
        self.waiting += 1
        try:
            while True:
                if self.stopped:
                    raise ServerUnavailable(
                        f"{self.function.tag} was stopped; deploy or serve its app again."
                    )
                if self._crash_looping():
                    raise ServerUnavailable(self._not_ready_message())
                task = choose(list(self.tasks.values()), self.function.max_inputs, session)
                if task is not None:
                    return task
                self.reconcile()
                if self._full() and not queue_when_full:
                    raise LimitExceeded(
                        f"Every container of {self.function.tag} is serving its max_concurrency="
                        f"{self.function.max_inputs} requests and no more may start; retry later"
                    )
                now = self.clock()
                if self._full():
                    room_since = now
                    if now >= deadline:
                        raise ServerUnavailable(
                            f"Every container of {self.function.tag} stayed busy for {wait:g} s and no "
                            "more may start; retry later, or allow more concurrency"
                        )
                elif now - room_since >= min(wait, self.function.startup_timeout):
                    raise ServerUnavailable(self._not_ready_message())
                await self.changed.wait(1.0)
        finally:
            self.waiting -= 1

    async def start_session(self, idle_timeout: float) -> Session:
        """A new sticky session on the least busy ready container (started if need be)."""
        task = await self._acquire("", self.function.startup_timeout)
        session = Session(
            new_id("se"), secrets.token_urlsafe(32), task.task_id, max(1.0, idle_timeout), self.clock()
        )
        self.sessions[session.token] = session
        return session

    def session(self, token: str) -> Session:
        self._expire_sessions()
        session = self.sessions.get(token)
        if session is None:
            raise NotFound(
                "This session has ended (terminated, idle past its idle_timeout, or its container "
                "stopped); start a new one with server.sessions.start()"
            )
        return session

    def end_session(self, token: str) -> bool:
        return self.sessions.pop(token, None) is not None

    def _session_task(self, session: Session) -> Task:
        task = self.tasks.get(session.task_id)
        if task is None or not task.ready or task.killed_for is not None:
            self.sessions.pop(session.token, None)
            raise NotFound(
                "This session's container has stopped; start a new session with server.sessions.start()"
            )
        return task

    def _expire_sessions(self) -> None:
        now = self.clock()
        for token, session in list(self.sessions.items()):
            if session.expired(now) or session.task_id not in self.tasks:
                del self.sessions[token]

    def _busy(self, task: Task) -> bool:
        return bool(task.inflight) or any(s.task_id == task.task_id for s in self.sessions.values())

    def tick(self) -> None:
        self._expire_sessions()
        super().tick()

    def _full(self) -> bool:
        """Every container is ready and busy, and the autoscaler (just reconciled) starts no
        other: the limits (max_containers, the machine) are reached."""
        serving = [t for t in self.tasks.values() if not t.draining]
        return bool(serving) and all(t.ready for t in serving)

    def _crash_looping(self) -> bool:
        """Containers keep ending before they are ready: stop starting them for a while."""
        recent = self.clock() - self.last_failure_at < FAILURE_BACKOFF
        return self.startup_failures >= MAX_STARTUP_FAILURES and recent

    def _not_ready_message(self) -> str:
        why = f" The last container ended: {self.last_failure}" if self.last_failure else ""
        return (
            f"No container of {self.function.tag} became ready within its startup timeout of "
            f"{self.function.startup_timeout:g} s (its server must answer on port "
            f"{self.function.http_port}, on 0.0.0.0).{why} The app's logs have its output."
        )

    def drain(self, task: Task) -> None:
        """Stop taking requests on this container; it ends once its requests are done."""
        task.draining = True
        if not task.inflight:
            self._stop(task)
        self.changed.notify()

    def _stop(self, task: Task) -> None:
        if task.container is not None and task.killed_for is None:
            stop = asyncio.ensure_future(task.container.kill(STOP_GRACE))
            self._kills.add(stop)
            stop.add_done_callback(self._kills.discard)

    def _check_timeouts(self, task: Task, now: float) -> None:
        """A server's requests have no per-input timeout (Modal's servers have none)."""

    def _settle_inflight(self, task: Task, reason: str) -> None:
        task.inflight.clear()  # the proxied requests see their connection close
        if not task.ready and not self.stopped:
            self.last_failure = reason + "."
        self.changed.notify()

    def reconcile(self) -> None:
        if not self._crash_looping():
            super().reconcile()

    def _count_startup_failure(self, task: Task, reason: str, launched: bool) -> None:
        if task.failure is not None:
            self.last_failure = task.failure.message.strip() or reason
        if self._failed_to_start(task, launched) or task.failure is not None:
            self.startup_failures += 1
            self.last_failure_at = self.clock()
            tail = "\n".join(f"  {line}" for line in task.output_tail[-10:])
            if tail and task.failure is None:
                self.last_failure += f" Its last output:\n{tail}"
