"""Apps' logs: streamed live (`AppGetLogs`, what `modal run` and `modal app logs -f` follow),
fetched by time range (`AppFetchLogs`, `AppCountLogs`: `modal app logs`, `modal container logs`).
After a restart an app's log starts with the entries its log file kept."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol, cast

from google.protobuf.timestamp_pb2 import Timestamp
from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.frontends.modal.dispatch import CallContext, long_poll
from kiln.streams import LogEntry

_MAX_FETCH = 10_000


class _Filters(Protocol):
    task_id: str
    function_id: str
    search_text: str


class LogHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def AppGetLogs(
        self, req: api_pb2.AppGetLogsRequest, ctx: CallContext
    ) -> AsyncIterator[api_pb2.TaskLogsBatch]:
        app_id = req.app_id or self.core.task_record(req.task_id).app_id  # `modal container logs -f`
        logs = self.core.app_logs(app_id)
        cursor, deadline = long_poll(req.last_entry_id, req.timeout)
        while True:
            remaining = deadline - time.monotonic()
            entries = await logs.read(cursor, max(0.0, remaining))
            wanted = [e for e in entries if _wanted(e, req, req.file_descriptor)]
            if entries:
                cursor = entries[-1].entry_id
            if wanted:
                for batch in batches(wanted):
                    yield batch
            elif logs.closed and not logs.after(cursor):
                yield api_pb2.TaskLogsBatch(app_done=True, entry_id=str(cursor))
                return
            if time.monotonic() >= deadline:
                return

    async def AppFetchLogs(
        self, req: api_pb2.AppFetchLogsRequest, ctx: CallContext
    ) -> api_pb2.AppFetchLogsResponse:
        """The most recent `limit` entries in [since, until), oldest first."""
        entries = self._in_range(req)
        limit = min(req.limit or _MAX_FETCH, _MAX_FETCH)
        return api_pb2.AppFetchLogsResponse(batches=batches(entries[-limit:]))

    async def AppCountLogs(
        self, req: api_pb2.AppCountLogsRequest, ctx: CallContext
    ) -> api_pb2.AppCountLogsResponse:
        """Entries per `bucket_secs` bucket, by source (the client splits its fetches by these)."""
        step = max(1, req.bucket_secs or 60)
        since = _seconds(req.since)
        buckets: dict[int, api_pb2.AppCountLogsResponse.LogBucket] = {}
        for entry in self._in_range(req):
            n = int((entry.timestamp - since) // step)
            bucket = buckets.get(n)
            if bucket is None:
                bucket = buckets[n] = api_pb2.AppCountLogsResponse.LogBucket(
                    bucket_start_at=_timestamp(since + n * step)
                )
            if entry.fd == api_pb2.FILE_DESCRIPTOR_STDERR:
                bucket.stderr_logs += 1
            elif entry.fd == api_pb2.FILE_DESCRIPTOR_INFO:
                bucket.system_logs += 1
            else:
                bucket.stdout_logs += 1
        return api_pb2.AppCountLogsResponse(app_id=req.app_id, buckets=[buckets[n] for n in sorted(buckets)])

    def _in_range(self, req: api_pb2.AppFetchLogsRequest | api_pb2.AppCountLogsRequest) -> list[LogEntry]:
        logs = self.core.app_logs(req.app_id)
        since = _seconds(req.since) if req.HasField("since") else 0.0
        until = _seconds(req.until) if req.HasField("until") else float("inf")
        return [e for e in logs.after(0) if since <= e.timestamp < until and _wanted(e, req, int(req.source))]


def _wanted(entry: LogEntry, req: _Filters, fd: int) -> bool:
    return (
        (not req.task_id or entry.task_id == req.task_id)
        and (not req.function_id or entry.function_id == req.function_id)
        and (not fd or entry.fd == fd)
        and (not req.search_text or req.search_text in entry.data)
    )


def batches(entries: Iterable[LogEntry]) -> list[api_pb2.TaskLogsBatch]:
    """Consecutive entries from the same source share one batch."""
    result: list[api_pb2.TaskLogsBatch] = []
    source: tuple[str, str, str] | None = None
    for entry in entries:
        key = (entry.task_id, entry.function_id, entry.image_id)
        if key != source:
            result.append(
                api_pb2.TaskLogsBatch(
                    task_id=entry.task_id, function_id=entry.function_id, image_id=entry.image_id
                )
            )
            source = key
        result[-1].items.append(
            api_pb2.TaskLogs(
                data=entry.data,
                file_descriptor=cast(Any, entry.fd),
                timestamp=entry.timestamp,
                timestamp_ns=int(entry.timestamp * 1e9),
                container_id=entry.task_id,
            )
        )
        result[-1].entry_id = str(entry.entry_id)
    return result


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
