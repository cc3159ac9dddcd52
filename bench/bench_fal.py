"""fal on kiln: the environment cache, and a sync call through fal's run URL beside the same
function called through Modal's client, in the same run on the same server.

1. Environment cache hit: `BuildEnvironment` of a requirement set already built, timed as the
   client sees it (one gRPC call on loopback: the server's work plus the round trip), p50/p99.
2. Sync call p50/p99: `POST https://<run host>/kiln/<app>/` of a deployed fal App (one runner, warm,
   one keep-alive connection trusting kiln's CA) beside `f.remote()` of a Modal function doing the
   same work (a greeting).

Needs the fal CLI of `scripts/install --test` (.venv-fal).

    .venv/bin/python bench/bench_fal.py [--quick] [--json out.json]
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time

from common import BENCH, REPO, RESULTS, arg_parser, ms, percentile, print_table, start_server, stop_server

FAL = REPO / ".venv-fal" / "bin" / "fal"
APP = BENCH / "fal_app.py"


def main() -> None:
    args = arg_parser(__doc__).parse_args()
    calls = 100 if args.quick else 1000
    server = start_server(RESULTS / "logs" / f"kiln-fal-{time.strftime('%Y%m%d-%H%M%S')}.log")
    rows, details = [], {}
    try:
        assert server.fal_exports is not None
        fal_env = {**os.environ, **server.fal_exports}
        deployed = subprocess.run(
            [str(FAL), "deploy", f"{APP}::Greeter", "--app-name", "kiln-bench-fal"],
            env=fal_env, capture_output=True, text=True, cwd=BENCH, check=False,
        )  # fmt: skip
        if deployed.returncode != 0:
            raise SystemExit(f"fal deploy failed:\n{deployed.stdout}\n{deployed.stderr}")
        run_host = server.fal_exports["FAL_RUN_HOST"]
        context = ssl.create_default_context(cafile=server.fal_exports["SSL_CERT_FILE"])

        hits = environment_cache_hits(server.fal_exports, 20 if args.quick else 100)
        details["environment cache hit"] = {
            "p50_ms": ms(percentile(hits, 50)),
            "p99_ms": ms(percentile(hits, 99)),
        }
        rows.append(
            ["BuildEnvironment, cached (fal client → kiln)", *details["environment cache hit"].values()]
        )

        fal_latencies = posts(
            http.client.HTTPSConnection(*split(run_host), context=context),
            "/kiln/kiln-bench-fal/",
            calls,
            server.fal_exports["FAL_KEY"],
        )
        details["fal run URL"] = {
            "p50_ms": ms(percentile(fal_latencies, 50)),
            "p99_ms": ms(percentile(fal_latencies, 99)),
        }
        rows.append(["fal App via the run URL (https)", *details["fal run URL"].values()])

        modal = modal_remote(server, calls)
        details["modal .remote()"] = {
            "p50_ms": ms(percentile(modal, 50)),
            "p99_ms": ms(percentile(modal, 99)),
        }
        rows.append(["Modal function via .remote()", *details["modal .remote()"].values()])
        subprocess.run(
            [str(FAL), "apps", "delete", "kiln-bench-fal"], env=fal_env, capture_output=True, check=False
        )
    finally:
        stop_server(server)
    print_table("fal on kiln (same server, same run)", ["what", "p50 (ms)", "p99 (ms)"], rows)
    if args.json is not None:
        args.json.write_text(json.dumps({"peer": "kiln", "metrics": {}, "details": details}, indent=2))


def split(host: str) -> tuple[str, int]:
    name, port = host.rsplit(":", 1)
    return name, int(port)


def posts(connection: http.client.HTTPConnection, path: str, count: int, key: str) -> list[float]:
    body = json.dumps({"name": "bench"}).encode()
    headers = {"content-type": "application/json", "authorization": f"Key {key}"}  # a private app

    def once() -> None:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status

    for _ in range(10):
        once()  # warm-up (the runner may still be starting)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        once()
        latencies.append(time.perf_counter() - started)
    return latencies


def environment_cache_hits(exports: dict[str, str], count: int) -> list[float]:
    """BuildEnvironment of the bench app's (already built) requirements, from a gRPC client."""
    code = r"""
import json, sys, time, grpc, isolate_proto
from google.protobuf import struct_pb2
from isolate_proto import controller_pb2_grpc
host, key, count, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
key_id, secret = key.split(":", 1)
stub = controller_pb2_grpc.IsolateControllerStub(grpc.insecure_channel(host))
definition = isolate_proto.EnvironmentDefinition(kind="virtualenv", configuration=struct_pb2.Struct())
definition.configuration.update(config)
request = isolate_proto.BuildEnvironmentRequest(environments=[definition])
metadata = [("auth-key-id", key_id), ("auth-key", secret)]
times = []
for _ in range(count + 3):
    started = time.perf_counter()
    for _reply in stub.BuildEnvironment(request, metadata=metadata):
        pass
    times.append(time.perf_counter() - started)
print(json.dumps(times[3:]))
"""
    config = {
        "requirements": ["six==1.16.0"],
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }
    result = subprocess.run(
        [sys.executable, "-c", code, exports["FAL_GRPC_HOST"], exports["FAL_KEY"], str(count), json.dumps(config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [float(t) for t in json.loads(result.stdout)]


def modal_remote(server: object, count: int) -> list[float]:
    code = r"""
import json, sys, time, modal
app = modal.App("kiln-bench-fal-peer")

@app.function(min_containers=1)
def greet(name):
    return {"greeting": f"hello {name}"}

with app.run():
    for _ in range(10):
        greet.remote("bench")
    times = []
    for _ in range(int(sys.argv[1])):
        started = time.perf_counter()
        greet.remote("bench")
        times.append(time.perf_counter() - started)
print("TIMES", json.dumps(times))
"""
    env = {**os.environ, **server.client_env()}  # type: ignore[attr-defined]
    result = subprocess.run(
        [sys.executable, "-c", code, str(count)], env=env, capture_output=True, text=True, check=True
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("TIMES "))
    return [float(t) for t in json.loads(line.removeprefix("TIMES "))]


if __name__ == "__main__":
    main()
