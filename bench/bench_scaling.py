"""Scaling and reliability through the official client (issue 4's figures):

1. one container with @modal.concurrent(max_inputs=100) and a 100 ms sleep: time for 100 inputs;
2. a burst of 50 one-second inputs with max_containers=10: time until 10 containers run, and total;
3. chaos: 2,000 inputs with retries while a random container is SIGKILLed every ~1 s:
   kills, and results lost or duplicated (must be 0; the client's .map() checks order).

    .venv/bin/python bench/bench_scaling.py [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from common import RESULTS, arg_parser, print_table, start_server, stop_server


def sandboxes_below(pid: int) -> list[int]:
    """Outermost bwrap process of each container started by the server `pid`."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            names[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])

    def under(p: int) -> bool:
        while p > 1:
            p = parents.get(p, 0)
            if p == pid:
                return True
        return False

    return [
        p for p, n in names.items() if n == "bwrap" and names.get(parents.get(p, 0)) != "bwrap" and under(p)
    ]


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--chaos-inputs", type=int, help="chaos inputs (default 2000, quick 400)")
    args = parser.parse_args()
    chaos_inputs = args.chaos_inputs or (400 if args.quick else 2000)
    server = start_server(RESULTS / "logs" / f"kiln-scaling-{time.strftime('%Y%m%d-%H%M%S')}.log")
    try:
        os.environ.update(server.client_env())
        from scaling_app import app, burst, chaos, concurrent_sleep

        with app.run():
            concurrent_sleep.remote(0.0)  # warm: the image is built, one container is up
            started = time.monotonic()
            runs = list(concurrent_sleep.map([0.1] * 100))
            concurrent_s = time.monotonic() - started
            peak = max(sum(1 for _, s, e in runs if s <= t < e) for _, t, _ in runs)

            started_wall = time.time()
            started = time.monotonic()
            results = list(burst.map([1.0] * 50))
            burst_s = time.monotonic() - started
            first_input = {}
            for task, s, _ in results:
                first_input[task] = min(first_input.get(task, s), s)
            tenth = sorted(first_input.values())[9] - started_wall if len(first_input) >= 10 else None

            kills = 0
            stop = threading.Event()

            def killer() -> None:
                nonlocal kills
                while not stop.wait(random.uniform(0.5, 1.5)):
                    victims = sandboxes_below(server.process.pid)
                    if victims:
                        try:
                            os.kill(random.choice(victims), signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass

            thread = threading.Thread(target=killer, daemon=True)
            started = time.monotonic()
            thread.start()
            try:
                got = list(chaos.map(range(chaos_inputs)))
            finally:
                stop.set()
                thread.join()
            chaos_s = time.monotonic() - started
    finally:
        stop_server(server)
    expected = list(range(chaos_inputs))
    rows = [
                ["concurrent: 100 x 100 ms on one container (s)", round(concurrent_s, 2), "peak concurrency " + str(peak)],
                ["burst: 50 x 1 s, max_containers=10, total (s)", round(burst_s, 2), f"{len(first_input)} containers"],
                ["burst: until the 10th container ran an input (s)", round(tenth, 2) if tenth else "-", ""],
                ["chaos: inputs / containers SIGKILLed", f"{chaos_inputs} / {kills}", f"{chaos_s:.1f} s"],
                ["chaos: results lost / duplicated / out of order",
                 f"{len(set(expected) - set(got))} / {len(got) - len(set(got))} / {int(got != expected)}", "must be 0"],
    ]  # fmt: skip
    print_table("[kiln scaling]", ["figure", "value", "note"], rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "kiln-scaling", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
