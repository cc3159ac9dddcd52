"""kiln server start-up: wall time from spawning `kiln server` to its `export MODAL_SERVER_URL=` line.

Each sample spawns a fresh `kiln server --port 0` on the bench home, waits for the export line
(then checks that the gRPC port accepts a TCP connection), and stops it. Also records what the
server says of itself ("kiln server ready in N ms", timed inside the process after imports).

    .venv/bin/python bench/bench_server_start.py [--quick] [--json out.json]
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

from common import RESULTS, arg_parser, emit, median, ms, start_server, stop_server


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--starts", type=int, help="server starts (default 7, quick 3)")
    args = parser.parse_args()
    starts = args.starts or (3 if args.quick else 7)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    wall, accept, reported = [], [], []
    for i in range(starts):
        t0 = time.perf_counter()
        server = start_server(RESULTS / "logs" / f"kiln-server-start-{stamp}-{i}.log")
        try:
            wall.append(server.spawn_to_export_s)
            url = urlparse(server.url)
            with socket.create_connection((url.hostname, url.port), timeout=5):
                accept.append(time.perf_counter() - t0)
            if server.reported_ms is not None:
                reported.append(server.reported_ms)
        finally:
            stop_server(server)
        time.sleep(0.2)

    result = {
        "peer": "kiln",
        "metrics": {"server_ready_ms": ms(median(wall))},
        "details": {
            "starts": starts,
            "spawn_to_export_ms": [ms(s) for s in wall],
            "spawn_to_tcp_accept_median_ms": ms(median(accept)),
            "self_reported_ready_ms": reported,
            "self_reported_ready_median_ms": median(reported) if reported else None,
        },
        "notes": [
            f"server ready = spawn -> export line (median of {starts}); kiln's own figure "
            f"(after its imports): {median(reported) if reported else '?'} ms"
        ],
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
