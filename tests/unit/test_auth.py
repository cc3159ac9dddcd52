"""Credentials, signed blob URLs and the rule for serving beyond loopback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kiln.auth import Credentials, SignedUrls, check_exposure
from kiln.config import Config
from kiln.errors import InvalidRequest
from kiln.testing import FakeClock


def test_credentials_are_made_once_private_and_checked(tmp_path: Path) -> None:
    first = Credentials.load_or_create(tmp_path)
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert Credentials.load_or_create(tmp_path) == first
    assert first.token_id.startswith("ak-") and first.token_secret.startswith("as-")
    assert first.accepts(first.token_id, first.token_secret)
    assert not first.accepts(first.token_id, first.token_secret + "x")
    assert not first.accepts("", "")
    assert Credentials.load_or_create(tmp_path / "other").token_secret != first.token_secret


def test_signed_urls_are_bound_to_their_id_size_operation_and_time() -> None:
    clock = FakeClock()
    urls = SignedUrls(b"k" * 32, "http://127.0.0.1:1", ttl=60, clock=clock)

    def parts(url: str) -> tuple[str, str, str, str]:
        query = dict(p.split("=") for p in url.split("?")[1].split("&"))
        return url.split("?")[0].rsplit("/", 1)[1], query["size"], query["expires"], query["sig"]

    blob_id, size, expires, sig = parts(urls.upload("bl-a", 10))
    assert urls.check("put", blob_id, size, expires, sig) == 10
    for op, bid, sz in (("get", blob_id, size), ("put", "bl-b", size), ("put", blob_id, "11")):
        with pytest.raises(InvalidRequest, match="not one kiln signed"):
            urls.check(op, bid, sz, expires, sig)
    with pytest.raises(InvalidRequest, match="not one kiln signed"):
        SignedUrls(b"x" * 32, "").check("put", blob_id, size, expires, sig)
    clock.advance(61)
    with pytest.raises(InvalidRequest, match="expired"):
        urls.check("put", blob_id, size, expires, sig)


def test_serving_beyond_loopback_needs_tls_or_an_explicit_insecure(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_exposure(Config(home=tmp_path, host=host))
    with pytest.raises(InvalidRequest, match=r"--tls-cert.*--insecure"):
        check_exposure(Config(home=tmp_path, host="0.0.0.0"))
    check_exposure(Config(home=tmp_path, host="0.0.0.0", insecure=True))
    check_exposure(Config(home=tmp_path, host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem"))
    with pytest.raises(InvalidRequest, match="go together"):
        check_exposure(Config(home=tmp_path, host="127.0.0.1", tls_cert="c.pem"))
