"""Calls, their inputs and outputs, and the per-function input queues.

A call is one `.remote()`, `.map()` or `.spawn()`; each of its inputs waits in its function's
queue until a container takes it, and its output is kept until the caller has read it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import collections.abc
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from kiln.core.functions import RetryPolicy
from kiln.core.results import Result, Status
from kiln.ids import new_id
from kiln.streams import Changed

log = logging.getLogger("kiln.calls")

# Modal clamps every retry delay to this range, whatever the policy says.
MIN_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 24 * 3600.0


CallLater = collections.abc.Callable[[float, collections.abc.Callable[[], None]], object]


Clock = collections.abc.Callable[[], float]


def _loop_call_later(delay: float, callback: collections.abc.Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(delay, callback)


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
    retry_count: int = 0  # retries charged so far; the container sees it on this attempt
    task_id: str = ""  # the container running the current attempt
    started_at: float = 0.0
    done: bool = False


@dataclass
class Output:
    input_id: str
    idx: int
    result: Result
    # What the caller sees: always 0, because retries are the server's (a client counting its
    # own retries drops outputs whose count differs from its own).
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
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    inputs: dict[str, Input] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    unfinished: int = 0
    num_inputs: int = 0
    cancelled: bool = False
    data_out: list[DataChunk] = field(default_factory=list)
    data_in: list[DataChunk] = field(default_factory=list)  # a web request's messages, in order
    changed: Changed = field(default_factory=Changed)
    created_at: float = field(default_factory=time.time)
    by_idx: dict[int, str] = field(default_factory=dict)  # idx → input ID: a re-sent input is not doubled


class CallLog(Protocol):
    """Where calls are written ahead of their acknowledgement (the core's journal)."""

    def call_created(self, call: FunctionCall) -> None: ...

    def inputs_added(self, call: FunctionCall, items: list[Input]) -> None: ...

    def output_added(self, call: FunctionCall, seq: int, output: Output) -> None: ...

    def call_cancelled(self, call: FunctionCall) -> None: ...


class FunctionQueue:
    """Inputs waiting for a container of one function, first in first out."""

    def __init__(self) -> None:
        self.pending: collections.deque[Input] = collections.deque()
        self.running = 0
        self.changed = Changed()

    def matching(self, method_name: str) -> int:
        return sum(1 for item in self.pending if item.method_name == method_name and not item.done)


def retry_delay(policy: RetryPolicy, retry_number: int) -> float:
    """Seconds before retry `retry_number`, within the bounds Modal documents for any policy."""
    return min(max(policy.delay(retry_number), MIN_RETRY_DELAY), MAX_RETRY_DELAY)


class Calls:
    """Every live call, and the queues containers take inputs from.

    An input is queued, then held by one container (`task_id`) until that attempt ends. An
    attempt's outcome goes through `settle()`: a failure with retries left puts the input back
    in the queue after the policy's backoff; anything else is the input's output.
    """

    def __init__(
        self, call_later: CallLater | None = None, clock: Clock | None = None, log: CallLog | None = None
    ) -> None:
        # How retries wait out their backoff and how long polls last (tests pass a fake clock).
        self.call_later = call_later or _loop_call_later
        self.clock = clock or time.monotonic
        # Every call, input and output is written here before anyone is told about it.
        self.log = log
        self.calls: dict[str, FunctionCall] = {}
        self.inputs: dict[str, Input] = {}
        self.queues: dict[str, FunctionQueue] = collections.defaultdict(FunctionQueue)
        self.on_enqueue: list[collections.abc.Callable[[str], None]] = []
        self.retries = 0  # attempts re-queued by a retry policy, for stats and tests

    def create(
        self,
        function_id: str,
        app_id: str,
        invocation: Invocation,
        is_map: bool,
        retry: RetryPolicy | None = None,
    ) -> FunctionCall:
        call = FunctionCall(new_id("fc"), function_id, app_id, invocation, is_map, retry or RetryPolicy())
        if self.log is not None:
            self.log.call_created(call)
        self.calls[call.call_id] = call
        return call

    def restore(self, call: FunctionCall, pending: list[Input]) -> None:
        """Bring back a call read from the journal: its `pending` inputs queue again (in order)."""
        self.calls[call.call_id] = call
        for item in pending:
            self.inputs[item.input_id] = item
            self.queues[item.function_id].pending.append(item)
        if pending:
            self._enqueued(call.function_id)

    def get(self, call_id: str) -> FunctionCall | None:
        return self.calls.get(call_id)

    def put_inputs(self, call: FunctionCall, items: list[tuple[int, bytes, str, bool]]) -> list[Input]:
        """Queue (idx, payload, method_name, final) items for `call`. An idx the call already has
        (a client re-sending inputs whose acknowledgement it lost) gives back the input it made."""
        answer: list[Input] = []
        created: list[Input] = []
        for idx, payload, method_name, final in items:
            known = call.by_idx.get(idx)
            if known is not None:
                answer.append(call.inputs[known])
                continue
            item = Input(new_id("in"), call.call_id, call.function_id, idx, payload, method_name, final)
            call.by_idx[idx] = item.input_id
            created.append(item)
            answer.append(item)
        if not created:
            return answer
        if self.log is not None:
            self.log.inputs_added(call, created)  # before the caller is told: the write-ahead
        queue = self.queues[call.function_id]
        for item in created:
            call.inputs[item.input_id] = item
            self.inputs[item.input_id] = item
            queue.pending.append(item)
        call.unfinished += len(created)
        call.num_inputs += len(created)
        self._enqueued(call.function_id)
        return answer

    def _enqueued(self, function_id: str) -> None:
        self.queues[function_id].changed.notify()
        for hook in self.on_enqueue:
            hook(function_id)

    async def take(
        self,
        function_id: str,
        task_id: str,
        max_items: int,
        timeout: float,
        stop: collections.abc.Callable[[], bool] = lambda: False,
        linger: float = 0.0,
    ) -> list[Input]:
        """Up to `max_items` inputs sharing one method name, for a container.

        Waits up to `timeout` for the first; with `linger`, waits up to that long more for a full
        batch. Returns early (empty) once `stop()` is true.
        """
        queue = self.queues[function_id]
        if not await _wait_until(queue, lambda: bool(queue.pending), timeout, stop, self.clock):
            return []
        if max_items > 1 and linger > 0:
            method_name = queue.pending[0].method_name
            await _wait_until(
                queue, lambda: queue.matching(method_name) >= max_items, linger, stop, self.clock
            )
        if stop():
            return []
        return self._take_now(queue, task_id, max_items)

    def _take_now(self, queue: FunctionQueue, task_id: str, max_items: int) -> list[Input]:
        taken: list[Input] = []
        skipped: list[Input] = []  # other methods' inputs keep their place
        now = time.time()
        while queue.pending and len(taken) < max_items:
            item = queue.pending.popleft()
            if item.done:
                continue
            if taken and item.method_name != taken[0].method_name:
                skipped.append(item)
                continue
            item.task_id = task_id
            item.started_at = now
            taken.append(item)
        queue.pending.extendleft(reversed(skipped))
        queue.running += len(taken)
        return taken

    def _release_from_task(self, item: Input) -> None:
        if item.task_id:
            self.queues[item.function_id].running -= 1
            item.task_id = ""

    def holds(self, input_id: str, task_id: str, retry_count: int | None = None) -> bool:
        """Whether `task_id` runs the current attempt of this input (else its news is stale)."""
        item = self.inputs.get(input_id)
        return (
            item is not None
            and not item.done
            and item.task_id == task_id
            and (retry_count is None or retry_count == item.retry_count)
        )

    def settle(self, input_id: str, result: Result, task_id: str) -> Input | None:
        """The outcome of the attempt `task_id` was running: retried per the call's policy if it
        failed and retries are left, otherwise the input's output. Stale attempts are ignored."""
        if not self.holds(input_id, task_id):
            return None
        item = self.inputs[input_id]
        call = self.calls.get(item.call_id)
        if call is None:
            return self.complete(input_id, result, task_id)
        if call.cancelled and not result.ok and not result.payload:
            # A failure kiln made up (the container died, say) of a cancelled call: it was cancelled.
            result = Result(Status.TERMINATED, "The call was cancelled.")
        if not _should_retry(item, call, result):
            return self.complete(input_id, result, task_id)
        self._release_from_task(item)
        item.retry_count += 1
        self.retries += 1
        delay = retry_delay(call.retry, item.retry_count)
        log.info(
            "input %s of %s failed (%s); retry %d of %d in %.1f s",
            input_id,
            call.call_id,
            result.message.splitlines()[0] if result.message else result.status.name,
            item.retry_count,
            call.retry.retries,
            delay,
        )
        self.call_later(delay, lambda: self._requeue_after_backoff(item))
        return item

    def _requeue_after_backoff(self, item: Input) -> None:
        if item.done or self.inputs.get(item.input_id) is not item:
            return  # cancelled or finished while waiting
        # Retries go first: they have waited already.
        self.queues[item.function_id].pending.appendleft(item)
        self._enqueued(item.function_id)

    def requeue(self, input_ids: collections.abc.Iterable[str], task_id: str) -> None:
        """Give inputs a container held back to the front of the queue, without charging a retry
        (their container was stopped for someone else's sake)."""
        back = []
        for input_id in input_ids:
            if not self.holds(input_id, task_id):
                continue
            item = self.inputs[input_id]
            call = self.calls.get(item.call_id)
            if call is None or call.cancelled:
                self.complete(input_id, Result(Status.TERMINATED, "The call was cancelled."), task_id)
                continue
            self._release_from_task(item)
            back.append(item)
        for item in reversed(back):  # in their original order, ahead of the rest
            self.queues[item.function_id].pending.appendleft(item)
        for function_id in {item.function_id for item in back}:
            self._enqueued(function_id)

    def complete(self, input_id: str, result: Result, task_id: str = "") -> Input | None:
        """Record an input's final outcome; ignores unknown or already finished inputs, and (given
        `task_id`) outcomes from a container no longer running it."""
        item = self.inputs.get(input_id)
        if item is None or item.done or (task_id and item.task_id != task_id):
            return None
        call = self.calls.get(item.call_id)
        output = Output(
            item.input_id, item.idx, result, 0, task_id or item.task_id, item.started_at, time.time()
        )
        if call is not None and self.log is not None:
            # Written before the caller can read it: after a crash it is delivered, not run again.
            self.log.output_added(call, len(call.outputs), output)
        item.done = True
        self._release_from_task(item)
        if call is not None:
            call.outputs.append(output)
            call.unfinished -= 1
            call.changed.notify()
        del self.inputs[input_id]
        return item

    def fail_running(self, task_id: str, inputs: list[str], result: Result) -> None:
        """The attempts `task_id` was running failed (its container died): retry or fail them."""
        for input_id in inputs:
            self.settle(input_id, result, task_id)

    def fail_pending(self, function_id: str, result: Result) -> None:
        """Fail every queued input of a function (its containers cannot start)."""
        queue = self.queues[function_id]
        while queue.pending:
            item = queue.pending.popleft()
            self.complete(item.input_id, result)

    def cancel(self, call_id: str, message: str = "The call was cancelled.") -> list[Input]:
        """Cancel queued (and retry-waiting) inputs of a call; returns its running inputs (for
        the caller to stop)."""
        call = self.calls.get(call_id)
        if call is None:
            return []
        call.cancelled = True
        if self.log is not None:
            self.log.call_cancelled(call)
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

    async def wait_outputs(
        self, call: FunctionCall, after: int, timeout: float, linger: float = 0.0
    ) -> list[Output]:
        """Outputs past position `after` in arrival order; waits up to `timeout` for one, then up
        to `linger` seconds more for others to join it (one reply instead of many)."""
        deadline = self.clock() + timeout
        while len(call.outputs) <= after and call.unfinished > 0:
            remaining = deadline - self.clock()
            if remaining <= 0 or not await call.changed.wait(remaining):
                break
        if linger > 0 and call.unfinished > 0 and len(call.outputs) > after:
            await asyncio.sleep(min(linger, max(0.0, deadline - self.clock())))
        return call.outputs[after:]

    def put_data_out(self, call_id: str, chunks: list[DataChunk]) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        data_out = call.data_out  # kept sorted by index
        for chunk in sorted(chunks, key=_index):
            if not data_out or chunk.index > data_out[-1].index:
                data_out.append(chunk)  # the usual case: items arrive in order
                continue
            at = bisect.bisect_left(data_out, chunk.index, key=_index)
            if data_out[at].index != chunk.index:  # a redelivered index is dropped
                data_out.insert(at, chunk)
        call.changed.notify()

    def put_data_in(self, call: FunctionCall, data_format: int, messages: list[bytes]) -> None:
        """Append messages to the call's input stream (numbered from 1, as the client expects)."""
        start = len(call.data_in) + 1
        call.data_in.extend(DataChunk(start + n, data_format, data) for n, data in enumerate(messages))
        call.changed.notify()

    def data_in_after(self, call: FunctionCall, last_index: int) -> list[DataChunk]:
        return call.data_in[max(0, last_index) :]

    def data_out_after(self, call: FunctionCall, last_index: int) -> list[DataChunk]:
        """The call's data chunks with an index past `last_index`."""
        return call.data_out[bisect.bisect_right(call.data_out, last_index, key=_index) :]


def _index(chunk: DataChunk) -> int:
    return chunk.index


def _should_retry(item: Input, call: FunctionCall, result: Result) -> bool:
    if result.ok or result.status == Status.TERMINATED or call.cancelled:
        return False
    return item.retry_count < call.retry.retries


async def _wait_until(
    queue: FunctionQueue,
    ready: collections.abc.Callable[[], bool],
    timeout: float,
    stop: collections.abc.Callable[[], bool],
    clock: Clock,
) -> bool:
    """Wait for `ready()` (re-checked whenever the queue changes) for up to `timeout` seconds."""
    deadline = clock() + timeout
    while not ready():
        remaining = deadline - clock()
        if stop() or remaining <= 0:
            return False
        await queue.changed.wait(remaining)
    return True
