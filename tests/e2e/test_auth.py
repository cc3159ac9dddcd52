"""Every API call is authenticated: the token pair `kiln server` printed, or the container's own
socket; anything else is UNAUTHENTICATED with a message that says where the right pair is."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2

from kiln.auth import Credentials
from tests.conftest import KilnServer, RestartableServer, raw_stub, run_client, run_modal

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
    assert stat.S_IMODE(kiln.home.stat().st_mode) == 0o700
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
