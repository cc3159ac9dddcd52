"""How an input ended, in terms the core can act on (retry, fail, report)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.IntEnum):
    # Values match the Modal protocol's GenericResult statuses, which are the industry's vocabulary.
    SUCCESS = 1
    FAILURE = 2
    TERMINATED = 3
    TIMEOUT = 4
    INIT_FAILURE = 5
    INTERNAL_FAILURE = 6


@dataclass(frozen=True)
class Result:
    """An input's outcome. `payload` is the frontend's own encoding of it, opaque to the core;
    results the core makes itself (crashes, timeouts) have only `status` and `message`."""

    status: Status
    message: str = ""
    payload: bytes = b""
    data_format: int = 0

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS
