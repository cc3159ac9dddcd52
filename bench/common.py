"""Shared helpers for the benchmarks: start/stop a `kiln server`, statistics, tables, JSON.

Every benchmark script writes one JSON document shaped like

    {"peer": "kiln", "metrics": {"warm_p50_ms": 0.9, ...}, "details": {...}, "notes": [...]}

The metric names are shared by all peers so that `run_all.py` can put them side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
HOME = Path(os.environ.get("KILN_BENCH_HOME", "/tmp/kiln-bench-home"))

# The metrics every peer reports (where it has one), their unit, and what kiln aims at.
METRICS: list[tuple[str, str, str]] = [
    # (key, label, kiln target)
    ("warm_p50_ms", "warm call p50 (ms)", "<= 1"),
    ("warm_p99_ms", "warm call p99 (ms)", ""),
    ("map_inputs_per_s", "map throughput (inputs/s)", ">= 5,000"),
    ("cold_start_ms", "cold start (ms, median)", "<= 100"),
    ("server_ready_ms", "server ready (ms)", "<= 500"),
    ("volume_put_mb_per_s", "Volume put 1 GiB (MB/s)", ">= 50% of cp + sync"),
    ("volume_get_mb_per_s", "Volume get 1 GiB (MB/s)", ">= 50% of cp"),
    ("sandbox_first_byte_p50_ms", "Sandbox.create → exec output p50 (ms)", "<= 150"),
    ("sandbox_exec_p50_ms", "sandbox exec round trip p50 (ms)", "<= 20"),
]


# ---------------------------------------------------------------- statistics and output


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    return str(value)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_result(result: dict[str, Any]) -> None:
    """One peer's figures, with kiln's targets next to them."""
    metrics = result["metrics"]
    rows = [[label, metrics.get(key), target] for key, label, target in METRICS if key in metrics]
    print_table(f"[{result['peer']}]", ["metric", result["peer"], "kiln target"], rows)
    for note in result.get("notes", []):
        print(f"  note: {note}")


def arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser


def emit(result: dict[str, Any], json_path: Path | None) -> None:
    print_result(result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------- a kiln server subprocess


def kiln_command(port: int = 0) -> list[str]:
    """`kiln server` from the project venv (the console script), on `port` (0: any free port)."""
    script = Path(sys.executable).parent / "kiln"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "kiln.cli.main"]
    return [*base, "server", "--port", str(port)]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    log_file: IO[str]
    log_path: Path
    spawn_to_export_s: float  # our wall clock: spawn -> the `export MODAL_SERVER_URL=` line
    reported_ms: float | None  # what kiln printed: "kiln server ready in N ms"
    token_id: str
    token_secret: str
    fal_exports: dict[str, str] | None = None  # what `kiln server` prints for the fal client

    def client_env(self) -> dict[str, str]:
        """What the official client needs to talk to this server instead of Modal."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_CONFIG_PATH": str(HOME / "modal.toml"),
        }

    def log_tail(self, n: int = 40) -> str:
        self.log_file.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_server(log_path: Path, timeout: float = 120, port: int = 0) -> Server:
    """Spawn `kiln server` on KILN_HOME=HOME and wait for its export line."""
    HOME.mkdir(parents=True, exist_ok=True)
    (HOME / "modal.toml").touch()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "w")
    env = {**os.environ, "KILN_HOME": str(HOME)}
    for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        env.pop(key, None)
    started = time.perf_counter()
    process = subprocess.Popen(
        kiln_command(port), env=env, stdout=subprocess.PIPE, stderr=log_file, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # a thread, so that a silent server cannot block us past the timeout
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    reported = None
    url = None
    exports: dict[str, str] = {}
    deadline = started + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            process.wait()
            log_file.close()
            raise RuntimeError(
                f"kiln server did not print its export line (rc={process.returncode}); log {log_path}:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        if m := re.search(r"ready in (\d+(?:\.\d+)?) ms", line):
            reported = float(m.group(1))
        if m := re.search(r"export MODAL_SERVER_URL=(\S+)", line):
            url = m.group(1)
            elapsed = time.perf_counter() - started  # the URL line: when a client could connect
        elif m := re.search(r"export ((?:MODAL_TOKEN|FAL|ISOLATE|SSL)_\w+)=(\S+)", line):
            exports[m.group(1)] = m.group(2)
        if url is not None and "FAL_RUN_HOST" in exports:  # the last export line
            return Server(
                url,
                process,
                log_file,
                log_path,
                elapsed,
                reported,
                exports["MODAL_TOKEN_ID"],
                exports["MODAL_TOKEN_SECRET"],
                {k: v for k, v in exports.items() if not k.startswith("MODAL_")},
            )


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        print("warning: kiln server did not stop within 30 s of SIGTERM; killing it", file=sys.stderr)
        server.process.kill()
        server.process.wait()
    server.log_file.close()
