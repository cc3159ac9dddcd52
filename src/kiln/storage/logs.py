"""Apps' logs on disk: one JSON-lines file per app, so `modal app logs` outlives a restart.

Entries are appended as they are made (one write each, no fsync: a killed server keeps what it
wrote; a power cut may cost the last lines). Reading takes the file's tail. A file that grows past
`max_bytes` is cut down to its tail, so a chatty deployed app cannot fill the disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import IO

from kiln.streams import LogEntry

_TAIL_BYTES = 4 << 20  # how much of a log file a restart reads back


class LogFiles:
    def __init__(self, root: Path, max_open: int = 64, max_bytes: int = 64 << 20) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self._open: dict[str, IO[str]] = {}
        self._max_open = max_open
        self._max_bytes = max_bytes

    def _path(self, app_id: str) -> Path:
        return self.root / f"{app_id}.jsonl"

    def append(self, app_id: str, entry: LogEntry) -> None:
        file = self._open.get(app_id)
        if file is None:
            if len(self._open) >= self._max_open:  # the oldest opened goes
                self._open.pop(next(iter(self._open))).close()
            file = self._open[app_id] = open(self._path(app_id), "a", encoding="utf-8")
        file.write(json.dumps(dataclasses.asdict(entry)) + "\n")
        file.flush()
        if file.tell() > self._max_bytes:
            self._cut(app_id)

    def _cut(self, app_id: str) -> None:
        """Keep the newest entries that fit in a quarter of the limit (atomically replaced)."""
        self.close(app_id)
        path = self._path(app_id)
        with open(path, "rb") as file:
            file.seek(-(self._max_bytes // 4), os.SEEK_END)
            tail = file.read().split(b"\n", 1)[-1]  # the first line read may be cut
        staging = path.with_suffix(".cut")
        staging.write_bytes(tail)
        os.replace(staging, path)

    def read(self, app_id: str, limit: int = 10_000) -> list[LogEntry]:
        """The app's last `limit` entries (fewer if its file's tail holds fewer)."""
        try:
            with open(self._path(app_id), "rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - _TAIL_BYTES))
                lines = file.read().splitlines()
        except FileNotFoundError:
            return []
        if size > _TAIL_BYTES:
            lines = lines[1:]  # the first line read may be cut
        entries = []
        for line in lines[-limit:]:
            try:
                entries.append(LogEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a crash mid-write
        return entries

    def remove(self, app_id: str) -> None:
        self.close(app_id)
        self._path(app_id).unlink(missing_ok=True)

    def close(self, app_id: str | None = None) -> None:
        for key in [app_id] if app_id is not None else list(self._open):
            file = self._open.pop(key, None)
            if file is not None:
                file.close()
