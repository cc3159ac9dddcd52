"""What a sandbox is, apart from the live ones: how it ended, how listings see it, how it is
journalled and named, and the pure decisions about it (when it expires, what its end is called,
which ended ones stop keeping their output, which tags match), with the clock passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kiln.containers import ExitStatus
from kiln.core.results import Status
from kiln.errors import InvalidRequest
from kiln.ids import new_id

# A sandbox's task ID ends with "V": the client routes `modal container exec` of such a task
# to the V2 sandbox protocol. A sandbox created over the V1 protocol has IDs of the V1 shape.
TASK_MARKER = "V"


@dataclass(frozen=True)
class SandboxResult:
    """How a sandbox ended."""

    status: Status
    exitcode: int = 0
    message: str = ""

    def to_json(self) -> str:
        return json.dumps([int(self.status), self.exitcode, self.message])

    @classmethod
    def from_json(cls, text: str) -> SandboxResult:
        status, exitcode, message = json.loads(text)
        return cls(Status(status), exitcode, message)


# --- decisions


def expired(
    now: float,
    started: float,
    timeout: float,
    last_active: float,
    idle_timeout: float,
    busy: bool,
) -> str:
    """Why a sandbox must end now ("timeout", "idle") or "" if it may run on. `busy`: an exec is
    running; a sandbox is idle when no exec runs and nothing was written to it or read from it
    for `idle_timeout` seconds (0: never idle)."""
    if timeout > 0 and now - started >= timeout:
        return "timeout"
    if idle_timeout > 0 and not busy and now - last_active >= idle_timeout:
        return "idle"
    return ""


def result_of(exit: ExitStatus, ended_by: str, timeout: float, idle_timeout: float) -> SandboxResult:
    """What a sandbox's end is called: by whom it was ended, else how its entrypoint exited."""
    if ended_by == "timeout":
        return SandboxResult(Status.TIMEOUT, 124, f"the sandbox reached its timeout of {timeout:g} s")
    if ended_by == "idle":
        return SandboxResult(
            Status.TIMEOUT, 124, f"the sandbox was idle for its idle_timeout of {idle_timeout:g} s"
        )
    if ended_by == "terminated":
        return SandboxResult(Status.TERMINATED, 137, "the sandbox was terminated")
    if ended_by:
        return SandboxResult(Status.TERMINATED, 137, ended_by)
    if exit.oom_killed:
        return SandboxResult(Status.FAILURE, 137, exit.describe())
    if exit.signal is not None:
        return SandboxResult(Status.FAILURE, 128 + exit.signal, f"the entrypoint was {exit.describe()}")
    code = exit.code or 0
    return SandboxResult(Status.SUCCESS if code == 0 else Status.FAILURE, code)


def to_forget(ended: list[tuple[str, float]], now: float, keep_seconds: float, keep_count: int) -> list[str]:
    """Which ended sandboxes (id, when it ended) no longer keep their output in memory: those
    ended more than `keep_seconds` ago, and the oldest beyond the newest `keep_count`."""
    newest_first = sorted(ended, key=lambda item: item[1], reverse=True)
    return [
        sandbox_id
        for n, (sandbox_id, ended_at) in enumerate(newest_first)
        if n >= keep_count or now - ended_at > keep_seconds
    ]


def tags_match(tags: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in wanted.items())


@dataclass
class SandboxInfo:
    """A sandbox as listings and lookups see it, live or from the journal."""

    sandbox_id: str
    task_id: str
    app_id: str
    environment: str
    name: str
    tags: dict[str, str]
    created_at: float
    image_id: str
    timeout: float
    idle_timeout: float
    tunnels: dict[int, int]  # container port → host loopback port
    result: SandboxResult | None
    finished_at: float  # wall-clock time it ended (0: running)


class SandboxNameTaken(InvalidRequest):
    """A running sandbox of the app already has the name."""


class SandboxFinished(InvalidRequest):
    """An operation that needs a running sandbox, on one that has ended."""


def new_ids(v1: bool) -> tuple[str, str]:
    """A new sandbox's ID and task ID. The client picks the protocol of a sandbox by its ID:
    `sb-` + 22 characters is V1, anything else V2 (kiln adds a "V"); a task ID ending in "V" is
    a V2 sandbox's, so a V1 sandbox's must not."""
    if not v1:
        return new_id("sb") + "V", new_id("ta") + TASK_MARKER
    task_id = new_id("ta")
    while task_id.endswith(TASK_MARKER):
        task_id = new_id("ta")
    return new_id("sb"), task_id


def info_from_row(row: tuple[object, ...]) -> SandboxInfo:
    sandbox_id, task_id, app_id, environment, name, data, created_at, result, ended_at = row
    fields = json.loads(str(data))
    return SandboxInfo(
        sandbox_id=str(sandbox_id),
        task_id=str(task_id),
        app_id=str(app_id),
        environment=str(environment),
        name=str(name or ""),
        tags=dict(fields.get("tags", {})),
        created_at=float(created_at),  # type: ignore[arg-type]
        image_id=str(fields.get("image_id", "")),
        timeout=float(fields.get("timeout", 0)),
        idle_timeout=float(fields.get("idle_timeout", 0)),
        tunnels={int(k): int(v) for k, v in fields.get("tunnels", {}).items()},
        result=SandboxResult.from_json(str(result)) if result else None,
        finished_at=float(ended_at or 0),  # type: ignore[arg-type]
    )
