"""The core's durable record: apps, deployments, functions, classes, calls, inputs and outputs.

Everything a user was told exists is written here first, in the state store's typed tables, so a
server killed at any moment comes back with it (`Core.restore`). What is written ahead of its
acknowledgement:

- a call, before `FunctionMap` answers with its ID;
- inputs, before `FunctionMap`/`FunctionPutInputs` answer with their IDs;
- an output, before any caller can read it (so a crash never runs a delivered input again);
- an app's functions and layout, before `FunctionCreate`/`AppPublish` answer.

What is not written: which container runs which input (after a restart every unfinished input is
queued again), generator data chunks, and autoscaler overrides.
Each write is one small SQLite transaction in WAL mode (tens of microseconds): cheap enough to
stay on the reply path, where it makes every acknowledgement safe without a second code path.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from kiln.core.apps import App, AppState
from kiln.core.calls import FunctionCall, Input, Invocation, Output
from kiln.core.functions import FunctionRecord, RetryPolicy
from kiln.core.pool import Task
from kiln.core.results import Result, Status
from kiln.storage.state import StateStore


@dataclass(frozen=True)
class Deployment:
    """One `modal deploy` (or rollback) of a named app: what it served, frozen."""

    app_id: str
    version: int
    deployed_at: float
    function_ids: dict[str, str]
    class_ids: dict[str, str]
    functions: list[FunctionRecord] = field(default_factory=list)
    classes: list[tuple[str, str, bytes]] = field(default_factory=list)  # (class ID, frontend, meta)
    tag: str = ""
    client_version: str = ""
    rollback_of: int = 0  # the version this one restored, if a rollback
    commit_info: bytes = b""


@dataclass
class StoredCall:
    """A call as the journal has it: the call, its unfinished inputs, its outputs in order."""

    call: FunctionCall
    pending: list[Input]


class Journal:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    # --- apps

    def save_app(self, app: App) -> None:
        self.state.execute(
            "INSERT OR REPLACE INTO apps (app_id, name, environment, description, state, frontend, created_at, "
            "stopped_at, function_ids, class_ids, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                app.app_id,
                app.name,
                app.environment,
                app.description,
                int(app.state),
                app.frontend,
                app.created_at,
                app.stopped_at,
                json.dumps(app.function_ids),
                json.dumps(app.class_ids),
                app.version,
            ),
        )

    def load_apps(self) -> list[App]:
        rows = self.state.query(
            "SELECT app_id, name, environment, description, state, frontend, created_at, stopped_at, "
            "function_ids, class_ids, version FROM apps ORDER BY created_at"
        )
        return [
            App(
                app_id=r[0],
                name=r[1],
                environment=r[2],
                description=r[3],
                state=AppState(r[4]),
                frontend=r[5],
                created_at=r[6],
                stopped_at=r[7],
                function_ids=json.loads(r[8]),
                class_ids=json.loads(r[9]),
                version=r[10],
            )
            for r in rows
        ]

    # --- deployments

    def add_deployment(self, deployment: Deployment) -> None:
        snapshot = {
            "functions": [_record_json(f) for f in deployment.functions],
            "classes": [[c, frontend, _b64(meta)] for c, frontend, meta in deployment.classes],
        }
        self.state.execute(
            "INSERT INTO deployments (app_id, version, deployed_at, tag, client_version, rollback_of, "
            "commit_info, function_ids, class_ids, snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                deployment.app_id,
                deployment.version,
                deployment.deployed_at,
                deployment.tag,
                deployment.client_version,
                deployment.rollback_of,
                deployment.commit_info,
                json.dumps(deployment.function_ids),
                json.dumps(deployment.class_ids),
                json.dumps(snapshot),
            ),
        )

    def deployments(self, app_id: str) -> list[Deployment]:
        """Every deployment of the app, newest first."""
        rows = self.state.query(
            "SELECT version, deployed_at, tag, client_version, rollback_of, commit_info, function_ids, "
            "class_ids, snapshot FROM deployments WHERE app_id = ? ORDER BY version DESC",
            (app_id,),
        )
        deployments = []
        for r in rows:
            snapshot = json.loads(r[8])
            deployments.append(
                Deployment(
                    app_id=app_id,
                    version=r[0],
                    deployed_at=r[1],
                    tag=r[2],
                    client_version=r[3],
                    rollback_of=r[4],
                    commit_info=r[5],
                    function_ids=json.loads(r[6]),
                    class_ids=json.loads(r[7]),
                    functions=[_record_from_json(f) for f in snapshot["functions"]],
                    classes=[(c, frontend, _unb64(meta)) for c, frontend, meta in snapshot["classes"]],
                )
            )
        return deployments

    # --- functions and classes

    def save_function(self, record: FunctionRecord) -> None:
        self.state.execute(
            "INSERT INTO functions (function_id, app_id, frontend, definition, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, strftime('%s', 'now')) ON CONFLICT(function_id) DO UPDATE SET "
            "app_id=excluded.app_id, frontend=excluded.frontend, definition=excluded.definition, "
            "meta=excluded.meta",
            (record.function_id, record.app_id, record.frontend, record.definition, record.meta),
        )

    def save_overrides(self, function_id: str, overrides: dict[str, Any]) -> None:
        """Runtime autoscaler changes (`Function.update_autoscaler`), kept until a new deploy."""
        self.state.execute(
            "UPDATE functions SET overrides = ? WHERE function_id = ?", (json.dumps(overrides), function_id)
        )

    def overrides(self, function_id: str) -> dict[str, Any]:
        rows = self.state.query("SELECT overrides FROM functions WHERE function_id = ?", (function_id,))
        return dict(json.loads(rows[0][0])) if rows else {}

    def functions_of(self, app_id: str) -> list[FunctionRecord]:
        rows = self.state.query(
            "SELECT function_id, app_id, frontend, definition, meta FROM functions WHERE app_id = ? "
            "ORDER BY rowid",
            (app_id,),
        )
        return [FunctionRecord(*r) for r in rows]

    def save_class(self, class_id: str, app_id: str, frontend: str, meta: bytes) -> None:
        self.state.execute(
            "INSERT OR REPLACE INTO classes (class_id, app_id, frontend, meta) VALUES (?, ?, ?, ?)",
            (class_id, app_id, frontend, meta),
        )

    def classes_of(self, app_id: str) -> list[tuple[str, str, bytes]]:
        """(class ID, frontend, meta) of the app's classes."""
        rows = self.state.query("SELECT class_id, frontend, meta FROM classes WHERE app_id = ?", (app_id,))
        return [(r[0], r[1], r[2]) for r in rows]

    # --- calls (the CallLog that `Calls` writes ahead to)

    def call_created(self, call: FunctionCall) -> None:
        self.state.execute(
            "INSERT INTO calls (call_id, function_id, app_id, invocation, is_map, retry, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                call.call_id,
                call.function_id,
                call.app_id,
                call.invocation.value,
                int(call.is_map),
                json.dumps(call.retry.__dict__),
                call.created_at,
            ),
        )

    def inputs_added(self, call: FunctionCall, items: list[Input]) -> None:
        with self.state.transaction():
            self.state.execute_many(
                "INSERT INTO inputs (input_id, call_id, idx, payload, method_name, final) VALUES (?, ?, ?, ?, ?, ?)",
                [(i.input_id, call.call_id, i.idx, i.payload, i.method_name, int(i.final)) for i in items],
            )

    def output_added(self, call: FunctionCall, seq: int, output: Output) -> None:
        result = output.result
        with self.state.transaction():
            self.state.execute(
                "INSERT OR REPLACE INTO outputs (call_id, seq, input_id, idx, status, message, payload, "
                "data_format, task_id, started_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call.call_id,
                    seq,
                    output.input_id,
                    output.idx,
                    int(result.status),
                    result.message,
                    result.payload,
                    result.data_format,
                    output.task_id,
                    output.started_at,
                    output.created_at,
                ),
            )
            self.state.execute("DELETE FROM inputs WHERE input_id = ?", (output.input_id,))

    def call_cancelled(self, call: FunctionCall) -> None:
        self.state.execute("UPDATE calls SET cancelled = 1 WHERE call_id = ?", (call.call_id,))

    def load_call(self, call_id: str) -> StoredCall | None:
        rows = self.state.query(
            "SELECT call_id, function_id, app_id, invocation, is_map, retry, cancelled, created_at "
            "FROM calls WHERE call_id = ?",
            (call_id,),
        )
        if not rows:
            return None
        r = rows[0]
        call = FunctionCall(
            call_id=r[0],
            function_id=r[1],
            app_id=r[2],
            invocation=Invocation(r[3]),
            is_map=bool(r[4]),
            retry=RetryPolicy(**json.loads(r[5])),
            cancelled=bool(r[6]),
            created_at=r[7],
        )
        for o in self.state.query(
            "SELECT input_id, idx, status, message, payload, data_format, task_id, started_at, created_at "
            "FROM outputs WHERE call_id = ? ORDER BY seq",
            (call_id,),
        ):
            result = Result(Status(o[2]), o[3], o[4], o[5])
            call.outputs.append(Output(o[0], o[1], result, 0, o[6], o[7], o[8]))
            done = Input(o[0], call_id, call.function_id, o[1], b"", done=True)
            call.inputs[done.input_id] = done
            call.by_idx[done.idx] = done.input_id
        pending = []
        for i in self.state.query(
            "SELECT input_id, idx, payload, method_name, final FROM inputs WHERE call_id = ? ORDER BY rowid",
            (call_id,),
        ):
            item = Input(i[0], call_id, call.function_id, i[1], i[2], i[3], bool(i[4]))
            call.inputs[item.input_id] = item
            call.by_idx[item.idx] = item.input_id
            pending.append(item)
        call.num_inputs = len(call.inputs)
        call.unfinished = len(pending)
        return StoredCall(call, pending)

    def unfinished_call_ids(self) -> list[str]:
        rows = self.state.query("SELECT call_id FROM inputs GROUP BY call_id ORDER BY min(rowid)")
        return [r[0] for r in rows]

    # --- schedules

    def schedule_deployed(self, function_id: str, anchor: float) -> None:
        """A deploy restarts the function's period (its last run is kept)."""
        self.state.execute(
            "INSERT INTO schedules (function_id, anchor, last_run) VALUES (?, ?, 0) "
            "ON CONFLICT(function_id) DO UPDATE SET anchor = excluded.anchor",
            (function_id, anchor),
        )

    def schedule_ran(self, function_id: str, when: float) -> None:
        self.state.execute("UPDATE schedules SET last_run = ? WHERE function_id = ?", (when, function_id))

    def schedule_times(self, function_id: str) -> tuple[float, float] | None:
        """(anchor, last run) of a scheduled function."""
        rows = self.state.query(
            "SELECT anchor, last_run FROM schedules WHERE function_id = ?", (function_id,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    # --- containers (the TaskEvents the scheduler reports to)

    def task_started(self, task: Task) -> None:
        self.state.execute(
            "INSERT OR REPLACE INTO tasks (task_id, app_id, function_id, enqueued_at, started_at, finished_at, "
            "exit) VALUES (?, ?, ?, ?, ?, 0, '')",
            (
                task.task_id,
                task.function.app_id,
                task.function.function_id,
                task.enqueued_at,
                task.started_at,
            ),
        )

    def task_finished(self, task: Task, how: str) -> None:
        self.state.execute(
            "UPDATE tasks SET finished_at = ?, exit = ? WHERE task_id = ?", (time.time(), how, task.task_id)
        )

    def task(self, task_id: str) -> TaskRecord | None:
        rows = self.state.query(
            "SELECT task_id, app_id, function_id, enqueued_at, started_at, finished_at, exit FROM tasks "
            "WHERE task_id = ?",
            (task_id,),
        )
        return TaskRecord(*rows[0]) if rows else None

    def end_unfinished_tasks(self, how: str) -> None:
        """Containers of a server that died died with it."""
        self.state.execute(
            "UPDATE tasks SET finished_at = ?, exit = ? WHERE finished_at = 0", (time.time(), how)
        )

    def expire_apps(self, before: float) -> list[str]:
        """Forget apps that stopped before `before` and were never deployed (deployed apps keep
        their history); returns their IDs."""
        stopped = (
            "SELECT app_id FROM apps WHERE state = ? AND stopped_at > 0 AND stopped_at < ? AND version = 0"
        )
        params = (int(AppState.STOPPED), before)
        with self.state.transaction():
            app_ids = [r[0] for r in self.state.query(stopped, params)]
            for table in ("functions", "classes", "apps"):
                self.state.execute(f"DELETE FROM {table} WHERE app_id IN ({stopped})", params)
        return app_ids

    def expire_calls(self, before: float) -> int:
        """Forget calls made before `before` (their results' retention is over)."""
        with self.state.transaction():
            old = "SELECT call_id FROM calls WHERE created_at < ?"
            self.state.execute(f"DELETE FROM outputs WHERE call_id IN ({old})", (before,))
            self.state.execute(f"DELETE FROM inputs WHERE call_id IN ({old})", (before,))
            count = self.state.query("SELECT count(*) FROM calls WHERE created_at < ?", (before,))[0][0]
            self.state.execute("DELETE FROM calls WHERE created_at < ?", (before,))
            self.state.execute("DELETE FROM tasks WHERE finished_at > 0 AND finished_at < ?", (before,))
        return int(count)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    app_id: str
    function_id: str
    enqueued_at: float
    started_at: float
    finished_at: float = 0.0
    exit: str = ""  # how it ended


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _record_json(record: FunctionRecord) -> list[Any]:
    return [record.function_id, record.app_id, record.frontend, _b64(record.definition), _b64(record.meta)]


def _record_from_json(data: list[Any]) -> FunctionRecord:
    return FunctionRecord(data[0], data[1], data[2], _unb64(data[3]), _unb64(data[4]))
