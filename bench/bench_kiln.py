"""kiln through the official client: warm `.remote()` latency, `.map()` throughput, cold start.

Starts its own `kiln server` (KILN_HOME = $KILN_BENCH_HOME or /tmp/kiln-bench-home), points the
in-process client at it and runs `bench/kiln_app.py`. The first `.remote()` builds the default
image when the home is new (~40 s); that warm-up is timed separately and excluded.

    .venv/bin/python bench/bench_kiln.py [--quick] [--json out.json]
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time

from common import RESULTS, arg_parser, emit, median, ms, percentile, start_server, stop_server


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--calls", type=int, help="warm .remote() calls (default 500, quick 100)")
    parser.add_argument("--map-inputs", type=int, help=".map() inputs (default 10000, quick 2000)")
    parser.add_argument("--cold-samples", type=int, help="cold starts (default 5, quick 3)")
    parser.add_argument(
        "--hang-timeout", type=float, default=900, help="abort (with stacks) after this many seconds"
    )
    args = parser.parse_args()
    calls = args.calls or (100 if args.quick else 500)
    map_inputs = args.map_inputs or (2000 if args.quick else 10_000)
    cold_samples = args.cold_samples or (3 if args.quick else 5)
    # If kiln hangs, say where we were instead of waiting forever.
    faulthandler.dump_traceback_later(args.hang_timeout, exit=True)

    server = start_server(RESULTS / "logs" / f"kiln-server-{time.strftime('%Y%m%d-%H%M%S')}.log")
    try:
        os.environ.update(server.client_env())  # before the client is first used
        result = run(calls, map_inputs, cold_samples)
    except BaseException:
        print(f"kiln server log tail ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        stop_server(server)
    result["details"]["server_log"] = str(server.log_path)
    emit(result, args.json)


def run(calls: int, map_inputs: int, cold_samples: int) -> dict:
    from kiln_app import app, noop  # imported after the env points the client at kiln

    details: dict = {"calls": calls, "map_inputs": map_inputs, "cold_samples": cold_samples}
    print("kiln: warm-up (builds the default image on a new home) ...", flush=True)
    t0 = time.perf_counter()
    with app.run():
        assert noop.remote(1) == 1
        details["warmup_first_call_s"] = round(time.perf_counter() - t0, 2)

        # 1. warm round trip: the container is up; one .remote() at a time.
        for _ in range(20):
            noop.remote()
        latencies = []
        for i in range(calls):
            t = time.perf_counter()
            noop.remote(i)
            latencies.append(time.perf_counter() - t)
        print(f"kiln: {calls} warm calls done", flush=True)

        # 2. .map() throughput; a first small map brings every container up.
        assert list(noop.map(range(200))) == list(range(200))
        t = time.perf_counter()
        count = sum(1 for _ in noop.map(range(map_inputs)))
        map_s = time.perf_counter() - t
        assert count == map_inputs, f".map() returned {count} of {map_inputs} results"
        print(f"kiln: map of {map_inputs} done in {map_s:.2f} s", flush=True)

    # 3. cold start: each sample is a new app run, so a new container from the cached image.
    enter_s, first_s = [], []
    for _ in range(cold_samples):
        time.sleep(0.5)  # let the previous app's containers go
        t = time.perf_counter()
        with app.run():
            t_entered = time.perf_counter()
            noop.remote()
            t_result = time.perf_counter()
        enter_s.append(t_entered - t)
        first_s.append(t_result - t_entered)
    print(f"kiln: {cold_samples} cold starts done", flush=True)

    details.update(
        warm_mean_ms=ms(sum(latencies) / len(latencies)),
        warm_max_ms=ms(max(latencies)),
        map_seconds=round(map_s, 3),
        cold_start_samples_ms=[ms(s) for s in first_s],
        app_run_enter_median_ms=ms(median(enter_s)),
        app_run_plus_first_result_median_ms=ms(
            median([a + b for a, b in zip(enter_s, first_s, strict=True)])
        ),
    )
    return {
        "peer": "kiln",
        "metrics": {
            "warm_p50_ms": ms(percentile(latencies, 50)),
            "warm_p99_ms": ms(percentile(latencies, 99)),
            "map_inputs_per_s": round(map_inputs / map_s, 1),
            "cold_start_ms": ms(median(first_s)),
        },
        "details": details,
        "notes": [
            "cold start = first .remote() on a fresh `app.run()` (new container, cached image); "
            f"`app.run()` itself took {ms(median(enter_s))} ms (median), not included",
        ],
    }


if __name__ == "__main__":
    main()
