"""A build step's output: streamed to the build log with build secrets masked, and its last
lines kept for the error message if the step fails."""

from __future__ import annotations

from kiln.images.planner import LogSink

TAIL_LINES = 25


class StepOutput:
    """A step's output: to the build log (build secrets' values masked) and a tail for errors."""

    def __init__(self, log: LogSink, secrets: dict[str, str]) -> None:
        self.log = log
        # Short values would mask ordinary words; a secret is rarely under 4 characters.
        self.values = sorted({v for v in secrets.values() if len(v) >= 4}, key=len, reverse=True)
        self.tail: list[str] = []
        self._partial = ""

    def redact(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "***")
        return text

    def write(self, fd: int, data: bytes) -> None:
        text = self._partial + data.decode(errors="replace")
        if self.values:  # whole lines only, so that a value split across reads is still masked
            complete, newline, self._partial = text.rpartition("\n")
            text = complete + newline
        self._emit(text)

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, text: str) -> None:
        if not text:
            return
        text = self.redact(text)
        self.tail.extend(text.splitlines())
        del self.tail[:-TAIL_LINES]
        self.log(text)
