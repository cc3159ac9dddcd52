"""Sandboxes: `Sandbox.create` → the first byte of an `exec`'s output, an `exec` round trip of
`echo`, and sandboxes created per second, through the official client against a `kiln server`
it starts, beside a plain `bwrap` of the same command (new namespaces over the host's root,
no overlay, no user-namespace mapping, no seccomp, no network) in the same run.

    .venv/bin/python bench/bench_sandboxes.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import subprocess
import time

from common import RESULTS, arg_parser, emit, ms, percentile, print_table, start_server, stop_server

_BWRAP = [
    "bwrap",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-all",
    "--die-with-parent",
]


def main() -> None:
    parser = arg_parser(__doc__)
    args = parser.parse_args()
    creates = 10 if args.quick else 30
    execs = 50 if args.quick else 200
    server = start_server(RESULTS / "logs" / f"kiln-sandboxes-{time.strftime('%Y%m%d-%H%M%S')}.log")
    try:
        os.environ.update(server.client_env())
        import modal  # after the environment points at this server

        app = modal.App.lookup("kiln-bench-sandboxes", create_if_missing=True)
        image = modal.Image.debian_slim()
        warmup = time.perf_counter()
        modal.Sandbox.create("true", app=app, image=image).wait()  # the image, built or found once
        warmup_s = time.perf_counter() - warmup

        first_byte = []
        for _ in range(creates):
            started = time.perf_counter()
            sb = modal.Sandbox.create(app=app, image=image)
            process = sb.exec("echo", "hi")
            next(iter(process.stdout))
            first_byte.append(time.perf_counter() - started)
            sb.terminate()

        sb = modal.Sandbox.create(app=app, image=image)
        round_trips = []
        for _ in range(execs):
            started = time.perf_counter()
            process = sb.exec("echo", "hi")
            assert process.stdout.read() == "hi\n"
            process.wait()
            round_trips.append(time.perf_counter() - started)
        sb.terminate()

        started = time.perf_counter()
        made = [modal.Sandbox.create("sleep", "60", app=app, image=image) for _ in range(creates)]
        per_second = creates / (time.perf_counter() - started)
        for sb in made:
            sb.terminate()
    finally:
        stop_server(server)

    bwrap_first, bwrap_total = [], []
    for _ in range(execs):
        started = time.perf_counter()
        process = subprocess.Popen([*_BWRAP, "echo", "hi"], stdout=subprocess.PIPE)
        assert process.stdout is not None
        process.stdout.read(1)
        bwrap_first.append(time.perf_counter() - started)
        process.stdout.read()
        process.wait()
        bwrap_total.append(time.perf_counter() - started)
    bwrap_rate = execs / sum(bwrap_total)

    details = {
        "create_to_first_exec_byte_p50_ms": ms(percentile(first_byte, 50)),
        "create_to_first_exec_byte_p99_ms": ms(percentile(first_byte, 99)),
        "exec_echo_round_trip_p50_ms": ms(percentile(round_trips, 50)),
        "exec_echo_round_trip_p99_ms": ms(percentile(round_trips, 99)),
        "sandboxes_created_per_s": round(per_second, 1),
        "bwrap_echo_first_byte_p50_ms": ms(percentile(bwrap_first, 50)),
        "bwrap_echo_first_byte_p99_ms": ms(percentile(bwrap_first, 99)),
        "bwrap_echo_total_p50_ms": ms(percentile(bwrap_total, 50)),
        "bwrap_echo_total_p99_ms": ms(percentile(bwrap_total, 99)),
        "bwrap_runs_per_s": round(bwrap_rate, 1),
        "samples": {"creates": creates, "execs": execs},
        "warmup_first_sandbox_s": round(warmup_s, 2),
    }
    d = details
    print_table(
        "Sandboxes (kiln) beside a plain bwrap of the same command",
        ["measure", "kiln p50", "kiln p99", "bwrap p50", "bwrap p99"],
        [
            ["create → first byte of exec output (ms)", d["create_to_first_exec_byte_p50_ms"],
             d["create_to_first_exec_byte_p99_ms"], d["bwrap_echo_first_byte_p50_ms"], d["bwrap_echo_first_byte_p99_ms"]],
            ["exec `echo hi` round trip (ms)", d["exec_echo_round_trip_p50_ms"], d["exec_echo_round_trip_p99_ms"],
             d["bwrap_echo_total_p50_ms"], d["bwrap_echo_total_p99_ms"]],
            ["sandboxes created (bwrap runs) per s", d["sandboxes_created_per_s"], None, d["bwrap_runs_per_s"], None],
        ],
    )  # fmt: skip
    emit(
        {
            "peer": "kiln",
            "metrics": {
                "sandbox_first_byte_p50_ms": d["create_to_first_exec_byte_p50_ms"],
                "sandbox_exec_p50_ms": d["exec_echo_round_trip_p50_ms"],
            },
            "details": details,
            "notes": [
                "targets (issue 11): create → first exec output ≤ 150 ms, exec round trip ≤ 20 ms",
                "bwrap: a plain `bwrap --unshare-all` of `echo hi` over the host's root (no overlay, "
                "user-namespace map, cgroups, seccomp or network): the floor a sandbox starts from",
            ],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
