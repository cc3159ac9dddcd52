"""A code interpreter on a sandbox: one Python process kept for the whole session, fed code on
its stdin (one JSON line per snippet) and answering on its stdout (one JSON line per answer).
Variables live on between snippets, as in a notebook."""

from __future__ import annotations

import json
from typing import Any

import modal

DRIVER = r"""
import contextlib, io, json, sys
namespace = {}
for line in sys.stdin:
    code = json.loads(line)["code"]
    out = io.StringIO()
    answer = {}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<cell>", "exec"), namespace)
    except Exception as exc:
        answer["error"] = f"{type(exc).__name__}: {exc}"
    answer["stdout"] = out.getvalue()
    print(json.dumps(answer), flush=True)
"""


class Interpreter:
    def __init__(self, app: modal.App, image: modal.Image) -> None:
        self.sandbox = modal.Sandbox.create("python", "-u", "-c", DRIVER, app=app, image=image, timeout=300)
        self._answers = iter(self.sandbox.stdout)  # one line per answer

    def run(self, code: str) -> dict[str, Any]:
        self.sandbox.stdin.write(json.dumps({"code": code}) + "\n")
        self.sandbox.stdin.drain()
        return json.loads(next(self._answers))  # type: ignore[no-any-return]

    def close(self) -> int | None:
        self.sandbox.stdin.write_eof()
        self.sandbox.stdin.drain()
        self.sandbox.wait(raise_on_termination=False)
        return self.sandbox.returncode
