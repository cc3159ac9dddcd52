"""fal apps on kiln, driven by the official `fal` CLI (in an environment of its own, as a fal
user has it) and plain HTTP: `fal run` builds the app's requirements into a cached image, serves
the App from a runner, and answers on the run host until the client exits."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import APPS, KilnServer, RestartableServer, run_modal

pytestmark = pytest.mark.e2e
FAL = Path(__file__).parents[2] / ".venv-fal" / "bin" / "fal"


def post(
    url: str, body: object, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, str]:
    """An https request that trusts kiln's local CA (the bundle `kiln server` exports)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data, {"content-type": "application/json", **(headers or {})}, method=method
    )
    context = ssl.create_default_context(cafile=os.environ["KILN_TEST_CA_BUNDLE"])
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class FalRun:
    """`fal run <target>` in the background, its output collected as it comes."""

    def __init__(self, kiln: KilnServer, target: str, log: Path) -> None:
        self.log = log
        self.out = open(log, "w")
        self.process = subprocess.Popen(
            [str(FAL), "run", target], cwd=APPS, env=kiln.fal_env, stdout=self.out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.3)
        return self.output()

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(60)
        finally:
            self.out.close()


@pytest.fixture(scope="module", autouse=True)
def trust_kiln(kiln: KilnServer) -> Iterator[None]:
    os.environ["KILN_TEST_CA_BUNDLE"] = kiln.fal_exports["SSL_CERT_FILE"]
    yield
    os.environ.pop("KILN_TEST_CA_BUNDLE", None)


@pytest.fixture(scope="module")
def hello(kiln: KilnServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FalRun, str]]:
    if not FAL.exists():
        pytest.fail("the fal client is missing: run ./scripts/install --test")
    run = FalRun(kiln, "fal_hello_app.py::Hello", tmp_path_factory.mktemp("fal") / "run.log")
    output = run.wait_for("Application startup complete")
    url = next(word for word in output.split() if word.startswith("https://") and "/kiln/hello" in word)
    yield run, url.rstrip("/")
    if run.process.poll() is None:
        run.interrupt()


def test_fal_run_builds_the_requirements_and_serves_the_app(hello: tuple[FalRun, str]) -> None:
    run, url = hello
    assert "Build complete" in run.output()
    assert post(url + "/", {"name": "kiln"}) == (200, '{"greeting":"hello kiln","setups":1}')


def test_setup_runs_once_per_runner_across_requests(hello: tuple[FalRun, str]) -> None:
    run, url = hello
    for _ in range(5):
        status, body = post(url + "/", {})
        assert status == 200 and json.loads(body)["setups"] == 1
    assert run.output().count("setup done") == 1  # the runner's output reached `fal run`, line by line
    assert "setup done 1.16.0" in run.output()


def test_an_unknown_app_gets_a_404_naming_the_apps(hello: tuple[FalRun, str]) -> None:
    _, url = hello
    status, body = post(url.rsplit("/", 1)[0] + "/no-such-app/", {})
    assert status == 404 and "/kiln/hello" in body, body


def fal_python(
    kiln: KilnServer, *args: str, cwd: Path = APPS, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """A Python script run with the fal client's own interpreter, pointed at `kiln`. One that
    hangs past `timeout` is aborted with every thread's stack in the failure (faulthandler
    prints them on SIGABRT), so a hang says where it was."""
    process = subprocess.Popen(
        [str(FAL.parent / "python"), *args],
        cwd=cwd,
        env={**kiln.fal_env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(args)} hung for {timeout:g} s; its threads:\n{stderr}\n{stdout}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def fal(kiln: KilnServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FAL), *args], cwd=APPS, env=kiln.fal_env, capture_output=True, text=True, timeout=600
    )


def test_a_private_deploy_answers_with_the_key_survives_kill_9_with_its_queue_requests_and_is_deleted(
    restartable_server: RestartableServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    kiln = restartable_server.server
    monkeypatch.setenv("KILN_TEST_CA_BUNDLE", kiln.fal_exports["SSL_CERT_FILE"])
    deployed = fal(kiln, "deploy", "fal_hello_app.py::Hello", "--auth", "private")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    queued = fal(kiln, "deploy", "fal_queue_app.py::Queued", "--auth", "private")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    url = f"https://{kiln.fal_exports['FAL_RUN_HOST']}/kiln/hello"
    assert url in deployed.stdout
    listed = fal(kiln, "apps", "list")
    assert listed.returncode == 0 and "hello" in listed.stdout, listed.stdout + listed.stderr
    key = {"authorization": f"Key {kiln.fal_exports['FAL_KEY']}"}
    assert post(url + "/", {"name": "x"})[0] == 401
    assert post(url + "/", {"name": "x"}, key) == (200, '{"greeting":"hello x","setups":1}')
    submitted = fal_python(kiln, "fal_queue_script.py", "submit", "kiln/queued", timeout=300)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "fetched {'greeting': 'hello fetched'}" in submitted.stdout
    assert "positions 0 1" in submitted.stdout  # both wait behind the slow request, in order
    request_ids = submitted.stdout.split("ids ", 1)[1].strip()
    _holds_no_credential(restartable_server.home, kiln.fal_exports["FAL_KEY"])
    restartable_server.kill_9()  # with the slow queue request in progress, two waiting behind it
    kiln = restartable_server.restart()
    assert kiln.fal_exports["FAL_RUN_HOST"] in url  # the same port, so the same URL
    assert post(url + "/", {"name": "again"}, key) == (200, '{"greeting":"hello again","setups":1}')
    assert "fal queue: 3 unfinished requests run again, 0 ended with their app" in kiln.log()
    collected = fal_python(kiln, "fal_queue_script.py", "collect", "kiln/queued", request_ids, timeout=300)
    assert collected.returncode == 0, collected.stdout + collected.stderr + restartable_server.log()
    assert collected.stdout.splitlines() == [
        "fetched Completed hello fetched",  # fetched before the restart, and still there
        "slow Completed hello slow",  # interrupted mid-run: run again
        f"big Completed hello b… {6 + 300_000}",
        "last Completed hello last",
    ]
    created = fal(kiln, "keys", "create", "--preset", "API", "--desc", "tests")
    assert created.returncode == 0, created.stdout + created.stderr
    user_key = re.search(r"FAL_KEY='([^']+)'", created.stdout)
    assert user_key is not None, created.stdout
    assert post(url + "/", {"name": "k"}, {"authorization": f"Key {user_key.group(1)}"})[0] == 200
    key_id = user_key.group(1).split(":")[0]
    assert key_id in fal(kiln, "keys", "list").stdout
    assert fal(kiln, "keys", "revoke", key_id).returncode == 0
    assert post(url + "/", {"name": "k"}, {"authorization": f"Key {user_key.group(1)}"})[0] == 401
    scaled = fal(kiln, "apps", "scale", "hello", "--keep-alive", "7", "--max-concurrency", "2")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert post(url + "/", {"name": "scaled"}, key)[0] == 200
    runners = fal(kiln, "runners", "list")
    assert runners.returncode == 0 and "hello" in runners.stdout, runners.stdout + runners.stderr
    revisions: list[str] = []
    for strategy in ("recreate", "rolling"):  # each answers through the switch, on the same URL
        again = fal(kiln, "deploy", "fal_hello_app.py::Hello", "--strategy", strategy, "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        revisions.append(json.loads(again.stdout.strip().splitlines()[-1])["revision"])
        assert post(url + "/", {"name": strategy}, key)[0] == 200
    history = fal(kiln, "apps", "list-rev", "hello")
    listed_revisions = re.findall(r"fr-\w+", history.stdout)
    assert listed_revisions[:2] == revisions[::-1] and len(listed_revisions) == 3, history.stdout
    first = listed_revisions[2]
    assert post(url + "/", {"name": "x"})[0] == 401  # private, as deployed
    back = fal(kiln, "apps", "set-rev", "hello", first, "--auth", "public")
    assert back.returncode == 0, back.stdout + back.stderr
    assert post(url + "/", {"name": "public"}) == (200, '{"greeting":"hello public","setups":1}')
    history = fal(kiln, "apps", "list-rev", "hello")
    assert re.findall(r"fr-\w+", history.stdout) == [first, *revisions[::-1]], history.stdout
    before = set(re.findall(r"ta-\w+", fal(kiln, "apps", "runners", "hello").stdout))
    assert before  # the runner that answered
    rollout = fal(kiln, "apps", "rollout", "hello")
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    assert post(url + "/", {"name": "fresh"})[0] == 200  # answered through the change of runners
    after = set(re.findall(r"ta-\w+", fal(kiln, "apps", "runners", "hello").stdout))
    assert after and not after & before, (before, after)
    deleted = fal(kiln, "apps", "delete", "hello")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert post(url + "/", {}, key)[0] == 404


def test_fal_environments_are_kilns_environments(kiln: KilnServer) -> None:
    created = fal(kiln, "environments", "create", "fal-staging", "--description", "for tests")
    assert created.returncode == 0, created.stdout + created.stderr
    listed = fal(kiln, "environments", "list")
    assert "fal-staging" in listed.stdout and "main" in listed.stdout, listed.stdout + listed.stderr
    assert "fal-staging" in run_modal(kiln, "environment", "list").stdout  # one set of names
    deleted = fal(kiln, "environments", "delete", "fal-staging", "--yes")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "fal-staging" not in fal(kiln, "environments", "list").stdout


def _holds_no_credential(home: Path, fal_key: str) -> None:
    """Nothing kiln keeps on disk about queue requests (the state database, its WAL, the bodies'
    files) holds the caller's key, which `fal_client` sent with each submit."""
    stored = [home / "state.sqlite3", home / "state.sqlite3-wal", *(home / "fal-requests").iterdir()]
    assert any(path.name.endswith(".request") for path in stored)  # the large body is a file
    secret = fal_key.split(":", 1)[1].encode()
    for path in stored:
        assert path.exists() and secret not in path.read_bytes(), path


def test_a_fal_function_called_from_a_script_returns_its_value_raises_its_error_and_keeps_data(
    kiln: KilnServer,
) -> None:
    result = fal_python(kiln, "fal_function_script.py", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "adding with six 1.16.0" in result.stdout  # the function's output, streamed back
    assert "result {'sum': 42}" in result.stdout
    assert "raised UserFunctionException Uncaught user function exception: no such thing" in result.stdout
    assert "recalled kept in /data" in result.stdout  # /data outlives the container that wrote it


def test_fal_client_runs_submits_and_subscribes_over_https(
    kiln: KilnServer, hello: tuple[FalRun, str]
) -> None:
    result = fal_python(kiln, "fal_client_script.py", "kiln/hello", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run {'greeting': 'hello sync', 'setups': 1}" in result.stdout
    assert "get {'greeting': 'hello queued', 'setups': 1}" in result.stdout
    assert "subscribe {'greeting': 'hello subscribed', 'setups': 1}" in result.stdout


def test_the_queue_api_over_plain_http_clients(kiln: KilnServer, hello: tuple[FalRun, str]) -> None:
    queue = f"https://{kiln.fal_exports['FAL_QUEUE_RUN_HOST']}/kiln/hello"
    status, body = post(queue + "/", {"name": "q"})
    assert status == 200, body
    submitted = json.loads(body)
    assert submitted["status_url"] == f"{queue}/requests/{submitted['request_id']}/status"
    deadline = time.monotonic() + 120
    while True:
        status, body = post(submitted["status_url"], None, method="GET")
        state = json.loads(body)
        assert "logs" in state
        if state["status"] == "COMPLETED":
            assert status == 200
            break
        assert status == 202 and time.monotonic() < deadline
        time.sleep(0.2)
    assert post(submitted["response_url"], None, method="GET") == (200, '{"greeting":"hello q","setups":1}')
    assert post(submitted["cancel_url"], None, method="PUT")[0] == 400  # already completed
    assert post(f"{queue}/requests/rq-unknown/status", None, method="GET")[0] == 404


def test_request_timeout_ends_a_sync_and_a_queued_request_with_a_504_and_its_logs_are_listed(
    kiln: KilnServer, hello: tuple[FalRun, str]
) -> None:
    _, url = hello
    queue = f"https://{kiln.fal_exports['FAL_QUEUE_RUN_HOST']}/kiln/hello"
    status, body = post(queue + "/nap", {"seconds": 12})
    assert status == 200, body
    submitted = json.loads(body)
    assert post(url + "/nap", {"seconds": 12}) == (
        504,
        "The request ran past the app's request_timeout of 8 s\n",
    )
    deadline = time.monotonic() + 60
    while json.loads(post(submitted["status_url"], None, method="GET")[1])["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    answer = post(submitted["response_url"], None, method="GET")
    assert answer[0] == 504 and "request_timeout of 8 s" in answer[1], answer
    # What its runner printed while it had the request, with ?logs=1 only.
    with_logs = json.loads(post(submitted["status_url"] + "?logs=1", None, method="GET")[1])
    assert "napping 12.0" in [item["message"] for item in with_logs["logs"]], with_logs
    assert json.loads(post(submitted["status_url"], None, method="GET")[1])["logs"] is None
    assert post(url + "/nap", {"seconds": 0.1}) == (200, '{"slept":0.1}')


def test_ctrl_c_ends_the_app_and_its_url(hello: tuple[FalRun, str]) -> None:
    run, url = hello
    run.interrupt()
    deadline = time.monotonic() + 30
    while post(url + "/", {})[0] != 404:
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_kiln_fal_runs_the_fal_cli_on_an_embedded_server(tmp_path: Path) -> None:
    from tests.conftest import TEST_HOME

    kiln_bin = Path(sys.executable).parent / "kiln"
    env = {**os.environ, "KILN_HOME": str(TEST_HOME), "PATH": f"{FAL.parent}:{os.environ['PATH']}"}
    log = tmp_path / "kiln-fal.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(kiln_bin), "fal", "run", "fal_hello_app.py::Hello"],
            cwd=APPS,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to a terminal's whole process group
        )
        try:
            deadline = time.monotonic() + 600
            while "Application startup complete" not in log.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            output = log.read_text()
            url = next(w for w in output.split() if w.startswith("https://") and "/kiln/hello" in w).rstrip(
                "/"
            )
            os.environ["KILN_TEST_CA_BUNDLE"], previous = (
                str(TEST_HOME / "tls" / "bundle.pem"),
                os.environ.get("KILN_TEST_CA_BUNDLE", ""),
            )
            try:
                status, body = post(url + "/", {"name": "embedded"})
                assert status == 200, (body, log.read_text())
            finally:
                os.environ["KILN_TEST_CA_BUNDLE"] = previous
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            process.wait(60)  # fal exits 1 on Ctrl-C ("Aborted"); kiln passes its status on
    assert "Aborted" in log.read_text()


def test_app_files_are_uploaded_once_and_laid_out_under_app(kiln: KilnServer, tmp_path: Path) -> None:
    run = FalRun(kiln, "fal_files_app.py::Files", tmp_path / "files.log")
    try:
        run.wait_for("Application startup complete")
        url = f"https://{kiln.fal_exports['FAL_RUN_HOST']}/kiln/files/"
        assert post(url, {}) == (200, '{"greeting":"hello from an app file","helper":"KILN!"}')
    finally:
        run.interrupt()


def test_several_endpoints_a_stream_and_a_websocket_through_the_run_host(
    kiln: KilnServer, tmp_path: Path
) -> None:
    import asyncio

    import aiohttp

    run = FalRun(kiln, "fal_routes_app.py::Routes", tmp_path / "routes.log")
    try:
        run.wait_for("Application startup complete")
        base = f"https://{kiln.fal_exports['FAL_RUN_HOST']}/kiln/routes"
        assert post(base + "/square", {"count": 4}) == (200, '{"squares":[0,1,4,9]}')
        status, body = post(base + "/stream", {"count": 3})
        assert status == 200 and body == "data: 0\n\ndata: 1\n\ndata: 2\n\n", body

        async def talk() -> str:
            context = ssl.create_default_context(cafile=kiln.fal_exports["SSL_CERT_FILE"])
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(base.replace("https", "wss") + "/echo", ssl=context) as socket:
                    await socket.send_str("kiln")
                    return await socket.receive_str()

        assert asyncio.run(talk()) == "KILN"
        over_ws = fal_python(kiln, "fal_ws_script.py", "kiln/routes", timeout=120)
        assert over_ws.returncode == 0, over_ws.stdout + over_ws.stderr
        assert "ws {'squares': [0, 1]}\nws {'squares': [0, 1, 4, 9]}" in over_ws.stdout
    finally:
        run.interrupt()


def test_a_bad_requirement_fails_the_build_naming_it_and_the_server_stays_up(
    kiln: KilnServer, tmp_path: Path
) -> None:
    script = tmp_path / "bad.py"
    script.write_text(
        "import fal\n\n"
        "@fal.function(requirements=['kiln-no-such-package-4242==1.0'])\n"
        "def f():\n    return 1\n\n"
        "f()\n"
    )
    result = fal_python(kiln, str(script), cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "kiln-no-such-package-4242" in result.stdout + result.stderr
    secret = fal(kiln, "secrets", "set", "KILN_TEST_UNSET=1")
    assert secret.returncode == 0, secret.stderr
    assert "KILN_TEST_UNSET" in fal(kiln, "secrets", "list").stdout
    assert fal(kiln, "secrets", "unset", "KILN_TEST_UNSET").returncode == 0
    assert "KILN_TEST_UNSET" not in fal(kiln, "secrets", "list").stdout
