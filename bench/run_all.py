"""Run every benchmark, print one side-by-side table, and save it all as JSON in bench/results/.

    .venv/bin/python bench/run_all.py            # full sizes
    .venv/bin/python bench/run_all.py --quick    # smaller sizes, a smoke run (a few minutes)

Each benchmark runs as its own process (so Ray, the modal client and the servers never share
one), one after another: kiln, kiln server start-up, the subprocess baseline, Ray, Volume put/get (with
`cp` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common import BENCH, HOME, METRICS, REPO, RESULTS, print_table

SCRIPTS = [  # (script, peer column it fills, size flags it accepts)
    ("bench_kiln.py", "kiln", ("calls", "map_inputs", "cold_samples")),
    ("bench_server_start.py", "kiln", ("starts",)),
    ("bench_sandboxes.py", "kiln", ()),
    ("bench_baseline.py", "subprocess", ("calls", "map_inputs", "cold_samples")),
    ("bench_ray.py", "ray", ("calls", "map_inputs", "cold_samples")),
    ("bench_volumes.py", "kiln", ("size_mb",)),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes: 100 calls, 2,000 map inputs, 3 cold starts"
    )
    parser.add_argument("--calls", type=int, help="warm calls per peer (default 500)")
    parser.add_argument("--map-inputs", type=int, help="map/throughput inputs per peer (default 10000)")
    parser.add_argument("--cold-samples", type=int, help="cold starts per peer")
    parser.add_argument("--starts", type=int, help="kiln server starts (default 7)")
    parser.add_argument("--size-mb", type=int, help="Volume put/get file size in MiB (default 1024)")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray out")
    parser.add_argument("--no-baseline", action="store_true", help="leave the subprocess baseline out")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark script")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts_dir = RESULTS / f"run-{stamp}"
    run = {
        "started": stamp,
        "quick": args.quick,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "scripts": {},
    }
    columns: dict[str, dict] = {}
    failed = []
    for script, peer, flags in SCRIPTS:
        if (peer == "ray" and args.no_ray) or (peer == "subprocess" and args.no_baseline):
            continue
        out = parts_dir / script.replace(".py", ".json")
        command = [sys.executable, str(BENCH / script), "--json", str(out)]
        command += ["--quick"] if args.quick else []
        for flag in flags:
            if getattr(args, flag) is not None:
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        print(f"\n=== {script} ===", flush=True)
        t = time.perf_counter()
        rc = run_logged(command, parts_dir / script.replace(".py", ".log"), args.timeout)
        elapsed = round(time.perf_counter() - t, 1)
        if rc != 0 or not out.exists():
            failed.append(f"{script} (exit {rc})")
            run["scripts"][script] = {"rc": rc, "seconds": elapsed}
            continue
        result = json.loads(out.read_text())
        run["scripts"][script] = {"rc": 0, "seconds": elapsed, **result}
        column = columns.setdefault(peer, {"metrics": {}, "notes": []})
        column["metrics"].update(result["metrics"])
        column["notes"] += [f"{peer}: {n}" for n in result.get("notes", [])]

    run["load_after"] = os.getloadavg()
    peers = list(columns)
    rows = [
        [label, *(columns[p]["metrics"].get(key) for p in peers), target] for key, label, target in METRICS
    ]
    print_table(
        f"kiln benchmarks ({'quick' if args.quick else 'full'} sizes; targets are aims, not asserted)",
        ["metric", *peers, "kiln target"],
        rows,
    )
    for peer in peers:
        for note in columns[peer]["notes"]:
            print(f"  {note}")
    load = ", ".join(f"{x:.1f}" for x in run["load_before"])
    print(
        f"  machine: {run['machine']['cpus']} CPUs, load average before the run {load}: figures are indicative"
    )

    run["table"] = {p: columns[p]["metrics"] for p in peers}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in (RESULTS / f"run-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(run, indent=2))
    print(f"\nresults: {RESULTS / f'run-{stamp}.json'} (and latest.json)")
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        sys.exit(1)


def run_logged(command: list[str], log_path: Path, timeout: float) -> int | str:
    """Run a benchmark script, echoing its output and keeping a copy (for when one fails)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=BENCH, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            log.write(line)
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                return "timeout"
        return process.wait()


def machine() -> dict:
    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "modal": pkg("modal"),
        "ray": pkg("ray"),
        "kiln_commit": commit,
        "kiln_home": str(HOME),
    }


if __name__ == "__main__":
    main()
