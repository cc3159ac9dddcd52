"""Ray as a peer (optional): skipped, with a note, when `import ray` fails.

- server ready: `ray.init()` starting a local cluster (one sample);
- warm call: an actor method call round trip, `ray.get(actor.noop.remote(i))`;
- throughput: 10,000 no-op tasks submitted at once, then `ray.get` of them all;
- cold start: a new actor created and its first method call answered (then killed).

    .venv/bin/python bench/bench_ray.py [--quick] [--json out.json]
"""

from __future__ import annotations

import logging
import os
import time

from common import arg_parser, emit, median, ms, percentile


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--calls", type=int, help="warm actor calls (default 500, quick 100)")
    parser.add_argument("--map-inputs", type=int, help="no-op tasks (default 10000, quick 2000)")
    parser.add_argument("--cold-samples", type=int, help="new actors (default 5, quick 3)")
    args = parser.parse_args()
    sizes = (
        args.calls or (100 if args.quick else 500),
        args.map_inputs or (2000 if args.quick else 10_000),
        args.cold_samples or (3 if args.quick else 5),
    )
    try:
        import ray
    except ImportError as exc:
        emit(
            {
                "peer": "ray",
                "metrics": {},
                "details": {},
                "skipped": True,
                "notes": [
                    f"Ray skipped: not importable ({exc}); `uv pip install ray` into the venv to include it"
                ],
            },
            args.json,
        )
        return
    try:
        result = run(ray, *sizes)
    except Exception as exc:  # Ray is only a peer: report, do not fail the suite
        result = {
            "peer": "ray",
            "metrics": {},
            "details": {},
            "skipped": True,
            "notes": [f"Ray failed: {type(exc).__name__}: {exc}"],
        }
    finally:
        ray.shutdown()
    emit(result, args.json)


def run(ray, calls: int, map_inputs: int, cold_samples: int) -> dict:
    t = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    init_s = time.perf_counter() - t

    @ray.remote
    def noop(x=None):
        return x

    @ray.remote
    class Echo:
        def noop(self, x=None):
            return x

    actor = Echo.remote()
    for i in range(50):  # warm-up
        ray.get(actor.noop.remote(i))
    latencies = []
    for i in range(calls):
        t = time.perf_counter()
        ray.get(actor.noop.remote(i))
        latencies.append(time.perf_counter() - t)
    ray.kill(actor)

    ray.get([noop.remote(i) for i in range(200)])  # warm-up: the task workers are up
    t = time.perf_counter()
    results = ray.get([noop.remote(i) for i in range(map_inputs)])
    map_s = time.perf_counter() - t
    assert results == list(range(map_inputs))

    cold = []
    for _ in range(cold_samples):
        t = time.perf_counter()
        fresh = Echo.remote()
        ray.get(fresh.noop.remote())
        cold.append(time.perf_counter() - t)
        ray.kill(fresh)
        time.sleep(0.2)

    return {
        "peer": "ray",
        "metrics": {
            "warm_p50_ms": ms(percentile(latencies, 50)),
            "warm_p99_ms": ms(percentile(latencies, 99)),
            "map_inputs_per_s": round(map_inputs / map_s, 1),
            "cold_start_ms": ms(median(cold)),
            "server_ready_ms": ms(init_s),
        },
        "details": {
            "ray_version": ray.__version__,
            "calls": calls,
            "map_inputs": map_inputs,
            "cold_samples_ms": [ms(s) for s in cold],
        },
        "notes": [
            "warm = actor method call; map = no-op tasks; cold = new actor + first call; "
            "server ready = one `ray.init()` (local cluster)",
        ],
    }


if __name__ == "__main__":
    main()
