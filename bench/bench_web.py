"""Web endpoints: a Starlette app's GET through kiln (deployed with `modal deploy`, one warm
container) as a web endpoint and as a Modal Server (`@app.server`: uvicorn in the container,
proxied by kiln's gateway), beside the same server's container port reached directly (the
gateway's cost alone) and the same app served by plain uvicorn on the host, in the same run.

Measures the p50/p99 latency of sequential requests over one keep-alive connection, and the
throughput of 8 concurrent clients (threads with a connection each).

    .venv/bin/python bench/bench_web.py [--quick] [--json out.json]
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from common import BENCH, RESULTS, arg_parser, ms, percentile, print_table, start_server, stop_server


def main() -> None:
    parser = arg_parser(__doc__)
    args = parser.parse_args()
    requests = 100 if args.quick else 1000
    seconds = 3.0 if args.quick else 10.0
    server = start_server(RESULTS / "logs" / f"kiln-web-{time.strftime('%Y%m%d-%H%M%S')}.log")
    rows, details = [], {}
    try:
        env = {**os.environ, **server.client_env(), "PYTHONPATH": str(BENCH)}
        subprocess.run(
            [sys.executable, "-m", "modal", "deploy", str(BENCH / "web_app.py")],
            env=env, capture_output=True, text=True, check=True, cwd=BENCH,
        )  # fmt: skip
        kiln_url = lookup(env, "modal.Function.from_name('kiln-bench-web', 'hello').get_web_url()")
        server_url = lookup(env, "modal.Server.from_name('kiln-bench-web', 'Server').get_url()")
        wait_ok(kiln_url)
        wait_ok(server_url)
        container_url = direct_url(env)
        cold_samples = cold_starts(env, 3 if args.quick else 10)
        details["cold endpoint, time to first byte"] = {"median_ms": ms(sorted(cold_samples)[len(cold_samples) // 2]),
                                                        "max_ms": ms(max(cold_samples))}  # fmt: skip
        with plain_uvicorn() as plain_url:
            peers = (
                ("kiln web endpoint (asgi_app)", kiln_url),
                ("kiln @app.server (proxied)", server_url),
                ("same container port, no gateway", container_url),
                ("plain uvicorn on the host", plain_url),
            )
            for peer, url in peers:
                latencies = sequential(url, requests)
                throughput = concurrent(url, seconds)
                details[peer] = {"p50_ms": ms(percentile(latencies, 50)), "p99_ms": ms(percentile(latencies, 99)),
                                 "requests_per_s": round(throughput, 1)}  # fmt: skip
                rows.append([peer, *details[peer].values()])
        subprocess.run(
            [sys.executable, "-m", "modal", "app", "stop", "--yes", "kiln-bench-web"], env=env, check=False
        )
    finally:
        stop_server(server)
    print_table(
        "GET / of a Starlette app", ["server", "p50 (ms)", "p99 (ms)", "requests/s (8 clients)"], rows
    )
    cold = details.get("cold endpoint, time to first byte", {})
    print_table("A cold web endpoint (no container), request → first byte", ["median (ms)", "max (ms)"],
                [[cold.get("median_ms"), cold.get("max_ms")]])  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"peer": "kiln", "metrics": {}, "details": details}, indent=2))


def lookup(env: dict[str, str], expression: str) -> str:
    """A URL the official client looks up (as a user would)."""
    code = f"import modal; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def cold_starts(env: dict[str, str], samples: int) -> list[float]:
    """Request → first byte of an endpoint whose containers have all scaled down."""
    url = lookup(env, "modal.Function.from_name('kiln-bench-web', 'cold').get_web_url()")
    results = []
    for _ in range(samples):
        time.sleep(5)  # past the 2 s scale-down window and the pool's 1 s tick
        connection = connect(url)
        started = time.perf_counter()
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read(1)
        results.append(time.perf_counter() - started)
        response.read()
        connection.close()
    return results


def direct_url(env: dict[str, str]) -> str:
    """The server container's own forwarded port (what kiln's gateway proxies to)."""
    code = (
        "import modal; s = modal.Server.from_name('kiln-bench-web', 'Server'); "
        "c = s._experimental_list_containers()[0]; print(f'http://{c.host}:{c.port}')"
    )
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return found.stdout.strip()


def get(connection: http.client.HTTPConnection) -> None:
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)


def wait_ok(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(connect(url))
            return
        except (OSError, AssertionError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sequential(url: str, count: int) -> list[float]:
    connection = connect(url)
    for _ in range(10):
        get(connection)  # warm-up
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        get(connection)
        latencies.append(time.perf_counter() - started)
    return latencies


def concurrent(url: str, seconds: float, clients: int = 8) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        connection = connect(url)
        while time.monotonic() < stop:
            get(connection)
            done[n] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


class plain_uvicorn:
    """The same app served by uvicorn in a subprocess on the host (fastapi from kiln's venv)."""

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        code = (
            "import sys, uvicorn; sys.path.insert(0, sys.argv[1]); from web_app import make_app; "
            "uvicorn.run(make_app(), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')"
        )
        self.process = subprocess.Popen([sys.executable, "-c", code, str(BENCH), str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, timeout=60)
        return url

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


if __name__ == "__main__":
    main()
