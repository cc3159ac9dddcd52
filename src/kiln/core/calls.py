"""Calls, their inputs and outputs, and the per-function input queues.

A call is one `.remote()`, `.map()` or `.spawn()`; each of its inputs waits in its function's
queue until a container takes it, and its output is kept until the caller has read it.
"""

from __future__ import annotations

import collections
import collections.abc
import enum
import time
from dataclasses import dataclass, field

from kiln.core.results import Result, Status
from kiln.ids import new_id
from kiln.streams import Changed


class Invocation(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"


@dataclass
class Input:
    input_id: str
    call_id: str
    function_id: str
    idx: int
    payload: bytes  # the frontend's encoding of the arguments
    method_name: str = ""
    final: bool = False
    retry_count: int = 0
    task_id: str = ""
    started_at: float = 0.0
    done: bool = False


@dataclass
class Output:
    input_id: str
    idx: int
    result: Result
    retry_count: int
    task_id: str
    started_at: float
    created_at: float


@dataclass
class DataChunk:
    index: int
    data_format: int
    data: bytes


@dataclass
class FunctionCall:
    call_id: str
    function_id: str
    app_id: str
    invocation: Invocation
    is_map: bool
    inputs: dict[str, Input] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    unfinished: int = 0
    num_inputs: int = 0
    cancelled: bool = False
    data_out: list[DataChunk] = field(default_factory=list)
    changed: Changed = field(default_factory=Changed)
    created_at: float = field(default_factory=time.time)


class FunctionQueue:
    """Inputs waiting for a container of one function, first in first out."""

    def __init__(self) -> None:
        self.pending: collections.deque[Input] = collections.deque()
        self.running = 0
        self.changed = Changed()


class Calls:
    """Every live call, and the queues containers take inputs from."""

    def __init__(self) -> None:
        self.calls: dict[str, FunctionCall] = {}
        self.inputs: dict[str, Input] = {}
        self.queues: dict[str, FunctionQueue] = collections.defaultdict(FunctionQueue)
        self.on_enqueue: list[collections.abc.Callable[[str], None]] = []

    def create(self, function_id: str, app_id: str, invocation: Invocation, is_map: bool) -> FunctionCall:
        call = FunctionCall(new_id("fc"), function_id, app_id, invocation, is_map)
        self.calls[call.call_id] = call
        return call

    def get(self, call_id: str) -> FunctionCall | None:
        return self.calls.get(call_id)

    def put_inputs(self, call: FunctionCall, items: list[tuple[int, bytes, str, bool]]) -> list[Input]:
        """Queue (idx, payload, method_name, final) items for `call`."""
        queue = self.queues[call.function_id]
        created = []
        for idx, payload, method_name, final in items:
            item = Input(new_id("in"), call.call_id, call.function_id, idx, payload, method_name, final)
            call.inputs[item.input_id] = item
            self.inputs[item.input_id] = item
            queue.pending.append(item)
            created.append(item)
        call.unfinished += len(items)
        call.num_inputs += len(items)
        queue.changed.notify()
        for hook in self.on_enqueue:
            hook(call.function_id)
        return created

    async def take(
        self,
        function_id: str,
        task_id: str,
        max_items: int,
        timeout: float,
        stop: collections.abc.Callable[[], bool] = lambda: False,
    ) -> list[Input]:
        """Up to `max_items` inputs for a container; waits up to `timeout` for the first, and
        returns early (empty) once `stop()` is true."""
        queue = self.queues[function_id]
        deadline = time.monotonic() + timeout
        while not queue.pending:
            remaining = deadline - time.monotonic()
            if stop() or remaining <= 0:
                return []
            await queue.changed.wait(remaining)
        taken: list[Input] = []
        now = time.time()
        while queue.pending and len(taken) < max_items:
            item = queue.pending.popleft()
            if item.done:
                continue
            item.task_id = task_id
            item.started_at = now
            taken.append(item)
        queue.running += len(taken)
        return taken

    def complete(self, input_id: str, result: Result, task_id: str = "") -> Input | None:
        """Record an input's outcome; ignores unknown or already finished inputs."""
        item = self.inputs.get(input_id)
        if item is None or item.done:
            return None
        item.done = True
        if item.task_id:
            self.queues[item.function_id].running -= 1
        call = self.calls.get(item.call_id)
        if call is not None:
            call.outputs.append(
                Output(
                    item.input_id, item.idx, result, 0, task_id or item.task_id, item.started_at, time.time()
                )
            )
            call.unfinished -= 1
            call.changed.notify()
        del self.inputs[input_id]
        return item

    def fail_running(self, task_id: str, inputs: list[str], result: Result) -> None:
        for input_id in inputs:
            self.complete(input_id, result, task_id)

    def fail_pending(self, function_id: str, result: Result) -> None:
        """Fail every queued input of a function (its containers cannot start)."""
        queue = self.queues[function_id]
        while queue.pending:
            item = queue.pending.popleft()
            item.task_id = ""
            self.complete(item.input_id, result)

    def cancel(self, call_id: str, message: str = "The call was cancelled.") -> list[Input]:
        """Cancel queued inputs of a call; returns its running inputs (for the caller to stop)."""
        call = self.calls.get(call_id)
        if call is None:
            return []
        call.cancelled = True
        running = []
        for item in list(call.inputs.values()):
            if item.done:
                continue
            if item.task_id:
                running.append(item)
            else:
                self.complete(item.input_id, Result(Status.TERMINATED, message))
        queue = self.queues[call.function_id]
        queue.pending = collections.deque(i for i in queue.pending if not i.done)
        return running

    def release(self, call_id: str) -> None:
        """Forget a call whose outputs the caller has consumed."""
        call = self.calls.pop(call_id, None)
        if call is not None:
            for input_id in call.inputs:
                self.inputs.pop(input_id, None)

    def load(self, function_id: str) -> tuple[int, int]:
        queue = self.queues[function_id]
        return len(queue.pending), queue.running

    async def wait_outputs(self, call: FunctionCall, after: int, timeout: float) -> list[Output]:
        """Outputs past position `after` in arrival order; waits up to `timeout` for one."""
        deadline = time.monotonic() + timeout
        while len(call.outputs) <= after and call.unfinished > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await call.changed.wait(remaining):
                break
        return call.outputs[after:]

    def put_data_out(self, call_id: str, chunks: list[DataChunk]) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        known = {c.index for c in call.data_out}
        call.data_out.extend(c for c in chunks if c.index not in known)
        call.data_out.sort(key=lambda c: c.index)
        call.changed.notify()
