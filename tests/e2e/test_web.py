"""Web endpoints of a deployed app, called over real HTTP: fastapi_endpoint (GET with a query, POST
with JSON), asgi_app (a streamed response), wsgi_app (Flask). URLs are printed by the client, stay
the same across redeploys, and answer a clear 404 once the app stops."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import KilnServer, RestartableServer, run_modal

pytestmark = pytest.mark.e2e
APP = "kiln-test-web"


def deploy(kiln: KilnServer, app_file: str = "web_app.py") -> dict[str, str]:
    """Deploy an app of tests/apps; the URL the client printed under each function (or server)."""
    result = run_modal(kiln, "deploy", app_file)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return printed_urls(output)


def printed_urls(output: str) -> dict[str, str]:
    """The URL the client printed under each function, server, or class method (`Cls.m -> url`)."""
    urls, name = {}, ""
    for line in output.splitlines():
        if method := re.search(r"([\w.]+) -> (http://127\.0\.0\.1:\d+)", line):
            urls[method.group(1)] = method.group(2)
        elif created := re.search(r"Created (?:web )?(?:[Ff]unction|Server) ([\w.*]+)", line):
            name = created.group(1)
        elif url := re.search(r"(http://127\.0\.0\.1:\d+)", line):
            if name:
                urls[name] = url.group(1)
            name = ""
    return urls


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def urls(kiln: KilnServer) -> Iterator[dict[str, str]]:
    urls = deploy(kiln)
    assert set(urls) == {"hello", "add", "stream", "flask_app", "echo_socket", "private"}, urls
    yield urls
    run_modal(kiln, "app", "stop", "--yes", APP)


def test_a_fastapi_endpoint_answers_get_with_query_parameters_and_post_with_json(
    urls: dict[str, str],
) -> None:
    assert fetch(urls["hello"] + "/?name=kiln") == (200, '{"hello":"kiln"}')
    body = json.dumps({"a": 2, "b": 40}).encode()
    assert fetch(urls["add"], body, {"content-type": "application/json"}) == (200, '{"sum":42}')


def test_an_asgi_app_streams_its_response_and_a_wsgi_app_answers(urls: dict[str, str]) -> None:
    assert fetch(urls["stream"]) == (200, "".join(f"chunk {i}\n" for i in range(5)))
    assert fetch(urls["flask_app"] + "/?who=you") == (200, "flask says hi to you")


def test_a_websocket_endpoint_talks_both_ways_and_closes(urls: dict[str, str]) -> None:
    from websockets.sync.client import connect

    with connect(urls["echo_socket"].replace("http://", "ws://") + "/ws", open_timeout=120) as socket:
        for word in ("one", "two"):
            socket.send(word)
            assert socket.recv(timeout=60) == f"echo: {word}"
        socket.send("bye")
        with pytest.raises(Exception, match="1000"):
            socket.recv(timeout=60)


PROXY_TOKENS = """
import sys
import modal

tokens = modal.Workspace.from_context().proxy_tokens
if sys.argv[1] == "create":
    token = tokens.create(name="tests")
    print(token.token_id, token.token_secret)
else:
    tokens.delete(sys.argv[2])
    print([t.token_id for t in tokens.list()])
"""


def test_a_proxy_auth_endpoint_wants_a_live_proxy_token(kiln: KilnServer, urls: dict[str, str]) -> None:
    status, text = fetch(urls["private"])
    assert status == 401 and "Modal-Key" in text, text
    token_id, secret = run_modal_python(kiln, PROXY_TOKENS, "create").split()
    headers = {"Modal-Key": token_id, "Modal-Secret": secret}
    assert fetch(urls["private"], headers=headers) == (200, '{"secret":"only for token holders"}')
    assert fetch(urls["private"], headers={**headers, "Modal-Secret": secret + "x"})[0] == 401
    assert token_id not in run_modal_python(kiln, PROXY_TOKENS, "delete", token_id)
    assert fetch(urls["private"], headers=headers)[0] == 401


def test_the_apps_own_404_comes_through(urls: dict[str, str]) -> None:
    status, _ = fetch(urls["stream"] + "/no-such-page")
    assert status == 404


def test_get_web_url_gives_the_printed_url_and_a_redeploy_keeps_it(
    kiln: KilnServer, urls: dict[str, str]
) -> None:
    script = f"import modal; print(modal.Function.from_name({APP!r}, 'hello').get_web_url())"
    looked_up = run_modal_python(kiln, script)
    assert looked_up == urls["hello"]
    assert deploy(kiln) == urls
    assert fetch(urls["hello"] + "/?name=again") == (200, '{"hello":"again"}')


def run_modal_python(kiln: KilnServer, script: str, *args: str) -> str:
    import subprocess
    import sys

    from tests.conftest import APPS

    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=APPS,
        env=kiln.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_stopped_apps_endpoint_says_so(kiln: KilnServer, urls: dict[str, str]) -> None:
    assert run_modal(kiln, "app", "stop", "--yes", APP).returncode == 0
    time.sleep(0.5)
    status, text = fetch(urls["hello"])
    assert status == 404 and "not running" in text, text
    assert urls["stream"] in text  # the 404 names the endpoints this server has
    # Deployed again, the same URL serves again.
    assert deploy(kiln) == urls
    assert fetch(urls["hello"] + "/?name=back")[0] == 200


def test_an_endpoint_keeps_its_url_and_answers_after_kill_9_and_a_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    before = deploy(server.server)
    assert fetch(before["hello"] + "/?name=before")[0] == 200
    server.kill_9()
    server.restart()
    assert fetch(before["hello"] + "/?name=after") == (200, '{"hello":"after"}')
