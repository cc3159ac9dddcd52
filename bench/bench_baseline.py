"""Plain-subprocess baseline: what the same work costs with no scheduler, RPC stack or sandbox.

- warm call: one pickled call/answer over a pipe to a persistent Python worker process;
- throughput: 10,000 calls pipelined over that pipe (a writer thread, the main thread reads);
- cold start: spawning `python -c pass` and waiting for it to exit (also with `-S -I`).

    .venv/bin/python bench/bench_baseline.py [--quick] [--json out.json]
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time

from common import arg_parser, emit, median, ms, percentile

WORKER = r"""
import pickle, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
def noop(x=None):
    return x
while True:
    try:
        x = pickle.load(inp)
    except EOFError:
        break
    pickle.dump(noop(x), out)
    out.flush()
"""


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--calls", type=int, help="warm calls (default 500, quick 100)")
    parser.add_argument("--map-inputs", type=int, help="pipelined calls (default 10000, quick 2000)")
    parser.add_argument("--cold-samples", type=int, help="process spawns (default 10, quick 5)")
    args = parser.parse_args()
    calls = args.calls or (100 if args.quick else 500)
    map_inputs = args.map_inputs or (2000 if args.quick else 10_000)
    cold_samples = args.cold_samples or (5 if args.quick else 10)

    worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert worker.stdin is not None and worker.stdout is not None
    send, recv = worker.stdin, worker.stdout

    def call(x: object) -> object:
        pickle.dump(x, send)
        send.flush()
        return pickle.load(recv)

    for i in range(50):  # warm-up
        call(i)
    latencies = []
    for i in range(calls):
        t = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - t)

    def writer() -> None:
        for i in range(map_inputs):
            pickle.dump(i, send)
        send.flush()

    t = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    results = [pickle.load(recv) for _ in range(map_inputs)]
    map_s = time.perf_counter() - t
    thread.join()
    assert results == list(range(map_inputs))
    send.close()
    worker.wait()

    def spawn(*flags: str) -> list[float]:
        samples = []
        for _ in range(cold_samples):
            t = time.perf_counter()
            subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
            samples.append(time.perf_counter() - t)
        return samples

    cold = spawn()
    cold_isolated = spawn("-S", "-I")

    result = {
        "peer": "subprocess",
        "metrics": {
            "warm_p50_ms": ms(percentile(latencies, 50)),
            "warm_p99_ms": ms(percentile(latencies, 99)),
            "map_inputs_per_s": round(map_inputs / map_s, 1),
            "cold_start_ms": ms(median(cold)),
        },
        "details": {
            "calls": calls,
            "map_inputs": map_inputs,
            "cold_samples_ms": [ms(s) for s in cold],
            "cold_start_python_S_I_median_ms": ms(median(cold_isolated)),
        },
        "notes": [
            "warm/map = pickle over a pipe to one persistent worker; cold = spawn `python -c pass` "
            f"(with -S -I: {ms(median(cold_isolated))} ms)",
        ],
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
