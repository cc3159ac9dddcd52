"""Every API call is authenticated: the token pair `kiln server` printed, or the container's own
socket; anything else is UNAUTHENTICATED with a message that says where the right pair is."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import modal
import pytest
from google.protobuf import empty_pb2
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientStub

from kiln.auth import Credentials, SignedUrls
from tests.conftest import (
    KilnServer,
    RestartableServer,
    raw_stub,
    run_client,
    run_modal,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.e2e


def _refusal(server: KilnServer, metadata: dict[str, str] | None, call: str = "AppList") -> GRPCError:
    async def go() -> None:
        async with raw_stub(server) as stub:
            if call == "AppList":
                await stub.AppList(api_pb2.AppListRequest(), metadata=metadata)
            else:
                await stub.ClientHello(empty_pb2.Empty(), metadata=metadata)

    with pytest.raises(GRPCError) as caught:
        asyncio.run(go())
    return caught.value


def _assert_unauthenticated(exc: GRPCError, server: KilnServer) -> None:
    assert exc.status == Status.UNAUTHENTICATED, exc
    assert "MODAL_TOKEN_ID" in (exc.message or "") and "kiln server" in (exc.message or ""), exc.message
    assert str(server.home / "credentials.json") in (exc.message or ""), exc.message


def test_credentials_are_private_to_the_server_owner(kiln: KilnServer) -> None:
    path = kiln.home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Owner only, except that the containers' group may walk through (not list) to their layers.
    assert stat.S_IMODE(kiln.home.stat().st_mode) in (0o700, 0o710)
    assert kiln.token_id.startswith("ak-") and kiln.token_secret.startswith("as-")
    assert stat.S_IMODE((kiln.home / "state.sqlite3").stat().st_mode) == 0o600


def test_a_raw_request_without_a_token_is_refused(kiln: KilnServer) -> None:
    _assert_unauthenticated(_refusal(kiln, None), kiln)
    _assert_unauthenticated(_refusal(kiln, None, "ClientHello"), kiln)


def test_a_wrong_token_is_refused(kiln: KilnServer) -> None:
    wrong = {"x-modal-token-id": kiln.token_id, "x-modal-token-secret": "as-" + "x" * 22}
    _assert_unauthenticated(_refusal(kiln, wrong), kiln)
    _assert_unauthenticated(_refusal(kiln, wrong, "ClientHello"), kiln)


def test_the_token_of_another_kiln_server_is_refused(kiln: KilnServer, tmp_path: Path) -> None:
    other = Credentials.load_or_create(tmp_path)
    assert (other.token_id, other.token_secret) != (kiln.token_id, kiln.token_secret)
    metadata = {"x-modal-token-id": other.token_id, "x-modal-token-secret": other.token_secret}
    _assert_unauthenticated(_refusal(kiln, metadata), kiln)


def test_the_printed_token_works(kiln: KilnServer) -> None:
    async def go() -> api_pb2.AppListResponse:
        async with raw_stub(kiln) as stub:
            await stub.ClientHello(empty_pb2.Empty(), metadata=kiln.metadata)
            return await stub.AppList(api_pb2.AppListRequest(), metadata=kiln.metadata)

    assert isinstance(asyncio.run(go()), api_pb2.AppListResponse)


@pytest.mark.timeout(120)
def test_the_official_client_with_a_wrong_token_gets_an_auth_error(kiln: KilnServer) -> None:
    result = run_modal(kiln, "app", "list", env={"MODAL_TOKEN_SECRET": "as-wrong"}, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "credentials.json" in output, output

    script = "import modal\nmodal.Client.verify(modal.config.config['server_url'], ('ak-no', 'as-no'))\n"
    verify = run_client(kiln, script, timeout=60)
    assert "AuthError" in verify.stderr, verify.stderr
    assert "ok" not in verify.stdout

    listed = run_modal(kiln, "app", "list", timeout=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr


def test_the_token_pair_survives_a_restart(restartable_server: RestartableServer) -> None:
    first = restartable_server.server
    again = restartable_server.restart()
    assert (again.token_id, again.token_secret) == (first.token_id, first.token_secret)


def _deployed_app_id(server: KilnServer, name: str) -> str:
    async def go() -> str:
        async with raw_stub(server) as stub:
            found = await stub.AppGetByDeploymentName(
                api_pb2.AppGetByDeploymentNameRequest(name=name), metadata=server.metadata
            )
            return found.app_id

    return asyncio.run(go())


@pytest.mark.timeout(300)
def test_a_container_is_scoped_to_its_own_app_and_environment(kiln: KilnServer, modal_client: None) -> None:
    import importlib

    deployed = run_modal(kiln, "deploy", "--name", "kiln-scope-target", "scope_target_app.py", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    other_app_id = _deployed_app_id(kiln, "kiln-scope-target")
    assert other_app_id.startswith("ap-")

    run_modal(kiln, "environment", "create", "kiln-scope-elsewhere")  # (kept from an earlier run)
    foreign = modal.Volume.from_name(
        "kiln-scope-volume", environment_name="kiln-scope-elsewhere", create_if_missing=True
    )
    foreign.hydrate()
    scope_app = importlib.import_module("scope_app")
    with scope_app.app.run():
        own_app_id = scope_app.app.app_id
        assert own_app_id is not None
        outcomes = scope_app.probe.remote(other_app_id, "kiln-scope-target", own_app_id, foreign.object_id)

    for name in (
        "AppList",
        "AppStop",
        "AppGetLogs",
        "TaskList",
        "AppDeploymentHistory",
        "Secret of another environment",
    ):
        assert outcomes[name].startswith("PERMISSION_DENIED: kiln: "), (name, outcomes[name])
    assert outcomes["FunctionGet other environment"].startswith("PERMISSION_DENIED"), outcomes
    volume = outcomes["Sandbox with a Volume of another environment"]
    assert volume.startswith("PERMISSION_DENIED") and "Volumes of its own environment" in volume, outcomes
    assert "own environment" in outcomes["FunctionGet other environment"], outcomes
    assert outcomes["own function"] == 42
    assert outcomes["deployed function"] == "echo hi"
    # The AppStop was refused: the deployed app still answers.
    assert _deployed_app_id(kiln, "kiln-scope-target") == other_app_id
    assert "a kiln bug" not in kiln.log()


def _blob_create(server: KilnServer, length: int) -> api_pb2.BlobCreateResponse:
    async def go() -> api_pb2.BlobCreateResponse:
        async with raw_stub(server) as stub:
            return await stub.BlobCreate(
                api_pb2.BlobCreateRequest(content_length=length), metadata=server.metadata
            )

    return asyncio.run(go())


def _http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers with lower-case names)"""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        with exc:  # its connection, closed (else a ResourceWarning fails a later test)
            return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def test_blobs_go_only_to_signed_unexpired_urls_once_and_within_their_size(kiln: KilnServer) -> None:
    created = _blob_create(kiln, 10)
    url = created.upload_urls.items[0]
    base = url.split("?")[0]
    assert "sig=" in url and base.endswith(created.blob_id)

    # An ID the server never issued, a URL without or with a tampered signature: refused.
    made_up = base.rsplit("/", 1)[0] + "/bl-madeup0000000000000000"
    assert _http("PUT", made_up, b"0123456789")[0] == 403
    assert _http("PUT", made_up + url[len(base) :], b"0123456789")[0] == 403
    assert _http("PUT", base, b"0123456789")[0] == 403
    assert _http("PUT", url[:-1] + ("0" if url[-1] != "0" else "1"), b"0123456789")[0] == 403
    # Expired (a URL signed with this server's key an hour ago).
    credentials = Credentials.load_or_create(kiln.home)
    stale = SignedUrls(
        credentials.signing_key, base.rsplit("/blobs/", 1)[0], clock=lambda: time.time() - 7200
    )
    status, body, _ = _http("PUT", stale.upload(created.blob_id, 10), b"0123456789")
    assert status == 403 and b"expired" in body
    # Over the announced size.
    assert _http("PUT", url, b"0123456789+")[0] == 413

    status, _, headers = _http("PUT", url, b"0123456789")
    assert status == 200 and headers["etag"].strip('"') == hashlib.md5(b"0123456789").hexdigest()
    assert _http("PUT", url, b"0123456789")[0] == 200  # a client's retry of the same bytes
    assert _http("PUT", url, b"9876543210")[0] == 409  # no overwrite

    # Downloads need the URL BlobGet signs.
    assert _http("GET", base)[0] == 403

    async def download_url() -> str:
        async with raw_stub(kiln) as stub:
            found = await stub.BlobGet(
                api_pb2.BlobGetRequest(blob_id=created.blob_id), metadata=kiln.metadata
            )
            return found.download_url

    status, body, _ = _http("GET", asyncio.run(download_url()))
    assert (status, body) == (200, b"0123456789")


def test_an_app_page_needs_the_url_the_server_signed(kiln: KilnServer) -> None:
    async def create() -> str:
        async with raw_stub(kiln) as stub:
            created = await stub.AppCreate(
                api_pb2.AppCreateRequest(description="page", environment_name="main"), metadata=kiln.metadata
            )
            await stub.AppStop(api_pb2.AppStopRequest(app_id=created.app_id), metadata=kiln.metadata)
            return created.app_page_url

    url = asyncio.run(create())
    status, body, _ = _http("GET", url)
    assert status == 200 and b"'page'" in body
    assert _http("GET", url.split("?")[0])[0] == 403
    assert _http("GET", url[:-1] + ("0" if url[-1] != "0" else "1"))[0] == 403


def test_a_blob_over_the_servers_limit_is_refused_up_front(kiln: KilnServer) -> None:
    with pytest.raises(GRPCError) as caught:
        _blob_create(kiln, 6 * 2**30)
    assert caught.value.status == Status.RESOURCE_EXHAUSTED
    assert "KILN_MAX_BLOB_GB" in (caught.value.message or "")


def test_a_host_beyond_loopback_is_refused_without_tls_or_insecure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "server", "--host", "0.0.0.0", "--port", "0"],
        env={**os.environ, "KILN_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--tls-cert" in result.stderr and "--insecure" in result.stderr, result.stderr


@pytest.mark.timeout(120)
def test_with_a_certificate_grpc_and_blobs_are_served_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = start_server(
        tmp_path / "home", tmp_path / "server.log", {"KILN_TLS_CERT": str(cert), "KILN_TLS_KEY": str(key)}
    )
    try:
        assert server.url.startswith("https://127.0.0.1:"), server.url
        host, port = server.url.removeprefix("https://").rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(["h2"])

        async def go() -> str:
            channel = Channel(host, int(port), ssl=context)
            try:
                stub = ModalClientStub(channel)
                await stub.ClientHello(empty_pb2.Empty(), metadata=server.metadata)
                created = await stub.BlobCreate(
                    api_pb2.BlobCreateRequest(content_length=3), metadata=server.metadata
                )
                return created.upload_urls.items[0]
            finally:
                channel.close()
                await asyncio.sleep(0.1)  # the TLS shutdown, before the loop ends

        url = asyncio.run(go())
        assert url.startswith("https://")
        request = urllib.request.Request(url, data=b"abc", method="PUT")
        with urllib.request.urlopen(
            request, timeout=30, context=ssl.create_default_context(cafile=str(cert))
        ) as r:
            assert r.status == 200
    finally:
        stop_server(server)
