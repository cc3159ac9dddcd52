"""Restart figures: from a restarted `kiln server` to the first answered call of a deployed app.

Deploys `bench/kiln_app.py` as `kiln-bench-restart` on a `kiln server` listening on a fixed port,
then, for each sample, ends the server and starts a new one on the same KILN_HOME and port, and
times spawn → the first `Function.from_name(...).remote()` that answers, from a client that was
connected before (it reconnects by itself). Side by side, in the same run:

- `kill -9` then restart (the journal brings the deployment back; a new container cold-starts);
- SIGTERM then restart;
- the peer: what a restart cost before kiln kept its state — restart, `modal deploy` again, call.

    .venv/bin/python bench/bench_restart.py [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH, RESULTS, arg_parser, median, ms, print_table, start_server, stop_server

APP = "kiln-bench-restart"


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--samples", type=int, help="restarts per kind (default 5, quick 2)")
    args = parser.parse_args()
    samples = args.samples or (2 if args.quick else 5)
    port = _free_port()
    logs = RESULTS / "logs"
    server = start_server(logs / f"kiln-restart-{time.strftime('%Y%m%d-%H%M%S')}.log", port=port)
    os.environ.update(server.client_env())
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    _deploy(env)
    import modal

    function = modal.Function.from_name(APP, "noop")
    function.remote(0)  # builds the image the first time
    figures: dict[str, list[float]] = {"kill -9, restart": [], "SIGTERM, restart": [], "restart + deploy": []}
    try:
        for _ in range(samples):
            for kind in figures:
                if kind == "SIGTERM, restart":
                    server.process.terminate()
                else:
                    server.process.send_signal(signal.SIGKILL)
                server.process.wait()
                server.log_file.close()
                started = time.perf_counter()
                server = start_server(logs / "kiln-restart-again.log", port=port)
                if kind == "restart + deploy":
                    _deploy(env)
                _first_answer(function)
                figures[kind].append(time.perf_counter() - started)
    finally:
        stop_server(server)
    rows = [[kind, ms(median(values)), ms(min(values)), ms(max(values))] for kind, values in figures.items()]
    print_table(
        "restart → first answered call of a deployed app (ms)", ["kind", "median", "min", "max"], rows
    )
    result = {
        "peer": "kiln",
        "metrics": {"restart_to_first_call_ms": ms(median(figures["kill -9, restart"]))},
        "details": {kind: [ms(v) for v in values] for kind, values in figures.items()},
        "notes": [
            "includes the server's start, the client's reconnection (its own backoff) and a "
            "new container's cold start"
        ],
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def _first_answer(function: object, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert function.remote(1) == 1  # type: ignore[attr-defined]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _deploy(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "modal", "deploy", "--name", APP, str(BENCH / "kiln_app.py")],
        env=env,
        check=True,
        capture_output=True,
        cwd=Path(BENCH),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
