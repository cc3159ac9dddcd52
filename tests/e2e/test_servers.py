"""Modal Servers (`@app.server`) on kiln: the user's own HTTP server, proxied from a URL the
client prints, started on demand or kept warm, scaled and routed by kiln."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import KilnServer, RestartableServer, run_modal
from tests.e2e.test_web import PROXY_TOKENS, deploy, run_modal_python

pytestmark = pytest.mark.e2e
APP = "kiln-test-server"


def fetch(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def urls(kiln: KilnServer) -> Iterator[dict[str, str]]:
    urls = deploy(kiln, "server_app.py")
    assert set(urls) == {"Open", "Guarded", "Silent", "Sockets", "Sticky"}, urls
    yield urls
    run_modal(kiln, "app", "stop", "--yes", APP)


def test_get_url_gives_the_printed_url(kiln: KilnServer, urls: dict[str, str]) -> None:
    script = f"import modal; print(modal.Server.from_name({APP!r}, 'Open').get_url())"
    assert run_modal_python(kiln, script) == urls["Open"]


def test_requests_reach_the_users_server_at_the_root_path_with_status_and_headers_intact(
    urls: dict[str, str],
) -> None:
    status, headers, body = fetch(urls["Open"] + "/some/path?q=1")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["path"] == "/some/path?q=1"
    assert answer["task"].startswith("ta-") and headers["x-served-by"] == answer["task"]
    status, _, body = fetch(urls["Open"] + "/teapot")
    assert (status, body) == (418, b"short and stout")


def test_a_large_body_goes_up_and_a_streamed_response_comes_back(urls: dict[str, str]) -> None:
    data = os.urandom(5 * 2**20)
    status, _, body = fetch(urls["Open"] + "/upload", data, {"content-type": "application/octet-stream"})
    assert status == 200, body
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with urllib.request.urlopen(urls["Open"] + "/stream", timeout=60) as response:
        lines = [response.readline() for _ in range(5)]
    assert lines == [f"line {n}\n".encode() for n in range(5)]


def test_min_containers_are_warm_and_a_session_id_keeps_reaching_one_container(
    urls: dict[str, str],
) -> None:
    def served_by(session: str) -> str:
        status, headers, body = fetch(urls["Open"], headers={"Modal-Session-Id": session})
        assert status == 200, body
        return headers["x-served-by"]

    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:  # the second warm container may still start
        seen |= {served_by(f"user-{n}") for n in range(16)}
        time.sleep(0.2)
    assert len(seen) == 2, seen  # min_containers=2: sessions spread over both
    for session in ("alice", "bob", "carol"):
        assert len({served_by(session) for _ in range(6)}) == 1


def test_an_authenticated_server_wants_a_proxy_token_and_never_sees_it(
    kiln: KilnServer, urls: dict[str, str]
) -> None:
    status, _, body = fetch(urls["Guarded"])
    assert status == 401 and b"Modal-Key" in body, body
    token_id, secret = run_modal_python(kiln, PROXY_TOKENS, "create").split()
    status, _, body = fetch(urls["Guarded"], headers={"Modal-Key": token_id, "Modal-Secret": secret})
    assert status == 200, body
    assert json.loads(body)["modal_key"] is None  # credentials stop at the gateway
    assert fetch(urls["Guarded"], headers={"Modal-Key": token_id, "Modal-Secret": "x"})[0] == 401


def test_the_servers_own_bearer_token_is_accepted(kiln: KilnServer, urls: dict[str, str]) -> None:
    script = (
        f"import modal; server = modal.Server.from_name({APP!r}, 'Guarded'); server.hydrate();"
        "print(server._get_service_function()._get_flash_auth_token())"  # what sessions send
    )
    token = run_modal_python(kiln, script)
    assert fetch(urls["Guarded"], headers={"Modal-Authorization": f"Bearer {token}"})[0] == 200
    assert fetch(urls["Guarded"], headers={"Modal-Authorization": f"Bearer {token}x"})[0] == 401


def test_a_websocket_is_relayed_both_ways_with_its_subprotocol(urls: dict[str, str]) -> None:
    async def talk() -> tuple[str | None, str, bytes]:
        url = urls["Sockets"].replace("http://", "ws://") + "/ws"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, protocols=("echo.v1",)) as socket:
                await socket.send_str("hello")
                text = await socket.receive_str()
                await socket.send_bytes(b"abc")
                data = await socket.receive_bytes()
                return socket.protocol, text, data

    protocol, text, data = asyncio.run(talk())
    assert protocol == "echo.v1"
    assert text.startswith("ta-") and text.endswith(": hello")
    assert data == b"cba"


SESSIONS = """
import sys, urllib.request, modal
server = modal.Server.from_name(sys.argv[1], "Sticky")
url = server.get_url()

def served_by(token):
    request = urllib.request.Request(url, headers={"Modal-Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        return response.headers["x-served-by"]

sessions = [server.sessions.start(idle_timeout=60) for _ in range(6)]
for session in sessions:
    print(session.session_id, len({served_by(session.token) for _ in range(4)}), served_by(session.token))
server.sessions.terminate(sessions[0].token)
try:
    served_by(sessions[0].token)
except urllib.error.HTTPError as error:
    print("after terminate", error.code)
"""


def test_sticky_sessions_pin_requests_to_one_container_until_terminated(
    kiln: KilnServer, urls: dict[str, str]
) -> None:
    lines = run_modal_python(kiln, SESSIONS, APP).splitlines()
    pinned = [line.split() for line in lines[:-1]]
    assert all(session.startswith("se-") and count == "1" for session, count, _ in pinned), lines
    assert lines[-1] == "after terminate 404"
    status, _, body = fetch(urls["Sticky"])
    assert status == 401 and b"sessions.start()" in body, body


def test_a_server_that_never_listens_answers_503_naming_the_startup_timeout(urls: dict[str, str]) -> None:
    status, headers, body = fetch(urls["Silent"])
    assert status == 503, body
    assert b"startup timeout of 3 s" in body and b"port 8002" in body, body
    assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1"


def test_a_stopped_servers_url_says_so(kiln: KilnServer, urls: dict[str, str]) -> None:
    assert run_modal(kiln, "app", "stop", "--yes", APP).returncode == 0
    status, _, body = fetch(urls["Open"])
    assert status == 404 and b"not running" in body, body


def test_a_deployed_server_keeps_its_url_and_answers_after_kill_9_and_a_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    before = deploy(server.server, "server_app.py")
    assert fetch(before["Open"])[0] == 200
    server.kill_9()
    server.restart()
    status, _, body = fetch(before["Open"] + "/after")
    assert status == 200 and json.loads(body)["path"] == "/after", body
