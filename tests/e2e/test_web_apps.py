"""Web apps as users write them, driven end to end with the official client, httpx and a real
browser (headless Chromium from Debian): a FastAPI `/docs` page and a Gradio UI rendered, class
endpoints with `@enter` state and a label, uploads, a 10 MB streamed CSV and server-sent events,
`web_server`, failures and limits, and `modal serve` reloading an edited app.

The browser has no internet here. FastAPI's docs page loads Swagger UI from a CDN; the browser is
pointed at a stand-in for that CDN on loopback (its host name mapped, a throwaway certificate
accepted) that serves the same files from the `flask-swagger-ui` package, so the user's app is the
one they would deploy and the page renders from kiln's `/openapi.json`. Gradio serves its own
frontend, so its page needs no stand-in.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import KilnServer, RestartableServer, run_client, run_modal
from tests.e2e.test_web import printed_urls

pytestmark = pytest.mark.e2e
APP = "kiln-test-web-more"
TIMEOUT = httpx.Timeout(120.0)


def deploy(server: KilnServer, module: str) -> dict[str, str]:
    """Deploy tests/apps/<module>; the URL the client printed for each function or method."""
    result = run_modal(server, "deploy", module)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return printed_urls(output)


def endpoint_keys(server: KilnServer) -> dict[int, str]:
    """Which endpoint (environment/app/label) each gateway port serves, from the server's home."""
    ports = json.loads((server.home / "endpoints.json").read_text())
    return {port: key for key, port in ports.items()}


def app_logs(server: KilnServer, app: str = APP) -> str:
    result = run_modal(server, "app", "logs", app, "--tail", "1000")
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def eventually(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def urls(kiln: KilnServer) -> Iterator[dict[str, str]]:
    urls = deploy(kiln, "web_more_app.py")
    expected = {"documented", "Greeter.hi", "fails", "fails_raw", "files", "file_server", "never_listens"}
    assert set(urls) == expected, urls
    yield urls
    run_modal(kiln, "app", "stop", "--yes", APP)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


# --- a real browser


def chromium(url: str, *flags: str) -> str:
    """The DOM headless Chromium rendered for `url`, once its scripts ran (up to 15 s of page time)."""
    browser = shutil.which("chromium")
    assert browser, "headless Chromium is missing: `scripts/install --test` installs Debian's chromium"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            *flags,
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


SWAGGER_CDN = "cdn.jsdelivr.net"  # where FastAPI's docs page loads Swagger UI from


@pytest.fixture(scope="module")
def swagger_cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A stand-in for the CDN FastAPI's docs page loads Swagger UI from: HTTPS on loopback with a
    throwaway certificate, serving Swagger UI's distribution from the flask-swagger-ui package.
    Yields the browser flags that send the CDN's host name to it."""
    package = importlib.util.find_spec("flask_swagger_ui")
    assert package is not None and package.origin, "flask-swagger-ui is missing: `scripts/install --test`"
    dist = Path(package.origin).parent / "dist"
    home = tmp_path_factory.mktemp("cdn")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={SWAGGER_CDN}", "-addext", f"subjectAltName=DNS:{SWAGGER_CDN}"),
            *("-keyout", str(home / "key.pem"), "-out", str(home / "cert.pem")),
        ],
        check=True,
        capture_output=True,
    )
    served: list[str] = []

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix, _, name = self.path.rpartition("/")
            path = dist / name
            if prefix != "/npm/swagger-ui-dist@5" or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            served.append(name)
            self.send_response(200)
            kind = "text/css" if name.endswith(".css") else "application/javascript"
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(home / "cert.pem", home / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield [f"--host-resolver-rules=MAP {SWAGGER_CDN} 127.0.0.1:{port}", "--ignore-certificate-errors"]
    server.shutdown()
    server.server_close()
    thread.join()
    assert "swagger-ui-bundle.js" in served


def test_a_fastapi_endpoints_docs_page_renders_its_operations_in_a_browser(
    urls: dict[str, str], swagger_cdn: list[str], http: httpx.Client
) -> None:
    spec = http.get(urls["documented"] + "/openapi.json").json()
    assert spec["paths"]["/"]["get"]["description"] == "Greets `name`, `times` times."
    dom = chromium(urls["documented"] + "/docs", *swagger_cdn)
    # Swagger UI fetched /openapi.json through kiln and rendered the operation list from it.
    assert re.search(r'opblock-summary-method">GET<', dom), dom[-3000:]
    assert re.search(r'opblock-summary-path" data-path="/"', dom), dom[-3000:]
    assert 'opblock-summary-description">Documented<' in dom, dom[-3000:]


@pytest.fixture(scope="module")
def gradio_url(kiln: KilnServer) -> Iterator[str]:
    urls = deploy(kiln, "gradio_app.py")
    yield urls["ui"]
    run_modal(kiln, "app", "stop", "--yes", "kiln-test-gradio")


def test_a_gradio_ui_mounted_on_fastapi_renders_in_a_browser_and_answers_its_api(
    gradio_url: str, http: httpx.Client
) -> None:
    dom = chromium(gradio_url + "/")
    # The labels are in the page's config too; rendered, they are components' block-info spans.
    for label in ("Name of the kiln user", "Greeting from kiln"):
        assert re.search(rf'data-testid="block-info"[^>]*>{label}', dom), dom[-3000:]
    assert '<textarea data-testid="textbox"' in dom
    # Gradio's own API: a call, then its result as server-sent events.
    started = http.post(gradio_url + "/gradio_api/call/greet", json={"data": ["kiln"]})
    assert started.status_code == 200, started.text
    result = http.get(gradio_url + f"/gradio_api/call/greet/{started.json()['event_id']}")
    assert "event: complete" in result.text and '["Hello, kiln!"]' in result.text, result.text


# --- class endpoints


def test_a_class_method_endpoint_has_its_label_and_answers_with_state_from_enter(
    kiln: KilnServer, urls: dict[str, str], http: httpx.Client
) -> None:
    url = urls["Greeter.hi"]
    answer = http.get(url + "/", params={"who": "kiln"}).json()
    assert answer["who"] == "kiln" and answer["greeting"].endswith("set in @enter"), answer
    # Every request of a container sees what its @enter set.
    assert http.get(url + "/").json()["greeting"] == answer["greeting"]
    assert endpoint_keys(kiln)[int(url.rsplit(":", 1)[1])] == f"main/{APP}/greeter-hi"
    script = f"import modal; print(modal.Cls.from_name({APP!r}, 'Greeter')().hi.get_web_url())"
    looked_up = run_client(kiln, script)
    assert looked_up.returncode == 0, looked_up.stderr
    assert looked_up.stdout.strip() == url


# --- uploads and streams


def test_a_5_mb_file_upload_arrives_whole(urls: dict[str, str], http: httpx.Client) -> None:
    data = os.urandom(5 * 2**20)
    files = {"file": ("data.bin", data, "application/octet-stream")}
    answer = http.post(urls["files"] + "/upload", files=files)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "name": "data.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_10_mb_csv_streams_incrementally(urls: dict[str, str], http: httpx.Client) -> None:
    url = urls["files"]
    received = bytearray()
    gate = uuid.uuid4().hex
    with http.stream("GET", url + f"/csv/{gate}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        chunks = response.iter_bytes()
        # The app makes the second half only after /release: the first must arrive without it.
        while len(received) < len("row,payload\n") + 50_000 * 100:
            received += next(chunks)
        assert http.post(url + f"/release/{gate}").status_code == 200
        for chunk in chunks:
            received += chunk
    lines = received.decode().splitlines()
    assert len(received) == 12 + 100_000 * 100
    assert lines[0] == "row,payload" and lines[-1].startswith("000099999,")
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(100_000))


def test_server_sent_events_arrive_as_they_are_sent(urls: dict[str, str], http: httpx.Client) -> None:
    url = urls["files"]
    events: list[tuple[str, str]] = []
    gate = uuid.uuid4().hex
    with http.stream("GET", url + f"/events/{gate}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
                events.append((kind, next(lines).removeprefix("data: ")))
                if kind == "ready":  # the rest waits for /release
                    assert http.post(url + f"/release/{gate}").status_code == 200
    assert events == [("ready", "first"), ("tick", "0"), ("tick", "1"), ("tick", "2"), ("done", "bye")]


def test_a_client_that_disconnects_mid_stream_leaves_the_gateway_serving(
    urls: dict[str, str], http: httpx.Client
) -> None:
    # Each stream waits halfway for a release that never comes, and its client leaves. The app's
    # one container takes 20 requests at once: had the gateway not ended the calls of the clients
    # gone, the last of these streams would never start.
    for _ in range(25):
        with (
            httpx.Client(timeout=TIMEOUT) as leaving,
            leaving.stream("GET", urls["files"] + f"/csv/{uuid.uuid4().hex}") as response,
        ):
            assert len(next(response.iter_bytes())) > 0
    assert len(http.get(urls["files"] + "/csv/short", params={"rows": 10}).text.splitlines()) == 11
    assert http.get(urls["documented"] + "/", params={"name": "again"}).json() == {"greeting": "hello again"}


# --- web_server


def test_a_web_server_in_the_container_answers(urls: dict[str, str], http: httpx.Client) -> None:
    response = http.get(urls["file_server"] + "/")
    assert response.status_code == 200
    assert response.text == "<h1>served by python -m http.server</h1>\n"
    assert http.get(urls["file_server"] + "/missing.html").status_code == 404


def test_a_web_server_that_never_opens_its_port_fails_with_502_and_says_why_in_the_logs(
    kiln: KilnServer, urls: dict[str, str], http: httpx.Client
) -> None:
    response = http.get(urls["never_listens"] + "/")
    assert response.status_code == 502, response.text
    assert "could not start" in response.text
    eventually(
        lambda: "Waited too long for port 8001 to start accepting connections" in app_logs(kiln),
        "the client's reason is in the app's logs",
    )
    assert "this web server never opens its port" in app_logs(kiln)


# --- failures and limits


def test_an_endpoint_that_raises_answers_500_with_its_traceback_in_the_logs_only(
    kiln: KilnServer, urls: dict[str, str], http: httpx.Client
) -> None:
    response = http.get(urls["fails"] + "/")
    assert response.status_code == 500
    assert "secret reason" not in response.text and "Traceback" not in response.text, response.text
    eventually(
        lambda: "ValueError: the secret reason this endpoint failed" in app_logs(kiln),
        "the traceback is in the app's logs",
    )
    assert "Traceback (most recent call last)" in app_logs(kiln)
    # A bare ASGI app that raises answers nothing itself: kiln's 500 does not quote it either.
    response = http.get(urls["fails_raw"] + "/")
    assert response.status_code == 500
    assert "secret reason" not in response.text and f"modal app logs {APP}" in response.text
    eventually(
        lambda: "RuntimeError: the secret reason the bare app failed" in app_logs(kiln),
        "the bare app's traceback is in the app's logs",
    )


def test_a_request_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    server = RestartableServer(tmp_path / "home", tmp_path / "logs")
    server.start(extra_env={"KILN_MAX_WEB_BODY_MB": "1"})
    try:
        files = deploy(server.server, "web_more_app.py")["files"]
        upload = files + "/upload"
        with httpx.Client(timeout=TIMEOUT) as http:
            small = {"file": ("small.bin", b"x" * 100_000)}
            assert http.post(upload, files=small).json()["size"] == 100_000
            big = {"file": ("big.bin", b"x" * 2 * 2**20)}
            response = http.post(upload, files=big)
            assert response.status_code == 413, response.text
            assert "KILN_MAX_WEB_BODY_MB" in response.text
            # Without a Content-Length (chunked), the limit holds as the body arrives.
            assert http.post(files + "/size", content=iter([b"y" * 2**16] * 8)).json() == {"size": 2**19}
            chunked = http.post(files + "/size", content=iter([b"y" * 2**16] * 40))
            assert chunked.status_code == 413, chunked.text
            assert http.post(upload, files=small).status_code == 200
    finally:
        server.close()


# --- modal serve

SERVE_APP = """
import modal

app = modal.App("kiln-test-serve", image=modal.Image.debian_slim().pip_install("fastapi", "flask"))


@app.function()
@modal.fastapi_endpoint()
def version():
    return {"version": VERSION}
"""


class Serving:
    """`modal serve` running in a process of its own; its output, line by line, as it comes."""

    def __init__(self, kiln: KilnServer, app: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modal", "serve", app.name],
            cwd=app.parent,
            env={**kiln.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        """The first line printed so far, or from now on, that matches `pattern`."""
        for line in self.output:
            if match := re.search(pattern, line):
                return match
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"`modal serve` did not print {pattern!r}:\n{''.join(self.output)}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.output.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self, how: signal.Signals = signal.SIGINT) -> int:
        """Ctrl-C (by default), as a user stops it."""
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.process.returncode


def test_modal_serve_prints_a_dev_url_and_reloads_an_edited_app_on_the_same_url(
    kiln: KilnServer, tmp_path: Path, http: httpx.Client
) -> None:
    app = tmp_path / "serve_app.py"
    app.write_text(SERVE_APP.replace("VERSION", "1"))
    serving = Serving(kiln, app)
    try:
        url = serving.wait_for(r"(http://127\.0\.0\.1:\d+)(?:\s|$)").group(1)  # not "View run at"
        assert http.get(url + "/").json() == {"version": 1}
        # A dev URL of its own: `-dev`, as Modal's, so it never takes over a deployed app's URL.
        assert endpoint_keys(kiln)[int(url.rsplit(":", 1)[1])] == "main/kiln-test-serve/version-dev"
        serving.wait_for(r"Watching ")
        # An edit made before the watcher has truly started goes unseen: edit again if need be.
        # While the app reloads, its URL may answer otherwise for a moment.
        for attempt in range(12):
            app.write_text(SERVE_APP.replace("VERSION", "2") + f"# edit {attempt}\n")
            with contextlib.suppress(AssertionError):
                eventually(lambda: http.get(url + "/").text == '{"version":2}', "the app reloads", 10)
                break
        assert http.get(url + "/").json() == {"version": 2}
    finally:
        code = serving.stop()
    assert code in (0, 130, -signal.SIGINT), "".join(serving.output)
    eventually(lambda: http.get(url + "/").status_code == 404, "the stopped app's URL says so")
    assert "not running" in http.get(url + "/").text


def test_a_terminated_modal_serve_leaves_its_app_to_stop_when_its_heartbeats_do(tmp_path: Path) -> None:
    # SIGTERM ends the client at once, without telling kiln: the app stops after the heartbeat
    # grace (3 s here, on a server of this test's own).
    server = RestartableServer(tmp_path / "home", tmp_path / "logs")
    server.start(extra_env={"KILN_HEARTBEAT_GRACE": "3"})
    app = tmp_path / "serve_app.py"
    app.write_text(SERVE_APP.replace("VERSION", "1"))
    try:
        serving = Serving(server.server, app)
        try:
            url = serving.wait_for(r"(http://127\.0\.0\.1:\d+)(?:\s|$)").group(1)
            with httpx.Client(timeout=TIMEOUT) as http:
                assert http.get(url + "/").json() == {"version": 1}
        finally:
            assert serving.stop(signal.SIGTERM) == -signal.SIGTERM, "".join(serving.output)
        with httpx.Client(timeout=TIMEOUT) as http:
            eventually(lambda: http.get(url + "/").status_code == 404, "the app stops")
            assert "not running" in http.get(url + "/").text
    finally:
        server.close()
