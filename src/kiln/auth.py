"""Who may drive this server: its token pair, and the key that signs its blob URLs.

`kiln server` creates both on its first start in `KILN_HOME/credentials.json` (0600, written
once, atomically) and prints the token pair in its `export MODAL_TOKEN_ID=…` lines. Every RPC from
a user's client must carry that pair; containers are identified by their own socket instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import ssl
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from kiln.config import Config
from kiln.errors import InvalidRequest

CREDENTIALS_FILE = "credentials.json"
_ALPHABET = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


@dataclass(frozen=True)
class Credentials:
    token_id: str
    token_secret: str
    signing_key: bytes  # HMAC key of blob URLs; never leaves the server
    path: Path

    @classmethod
    def load_or_create(cls, home: Path) -> Credentials:
        """This server's credentials, created on first use (several servers starting on one
        home at once agree: the file is created exclusively, and the losers read it)."""
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = home / CREDENTIALS_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._read(path)
        data = {
            "token_id": f"ak-{_random(22)}",
            "token_secret": f"as-{_random(22)}",
            "signing_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> Credentials:
        for _ in range(50):  # another server may be writing it this instant
            try:
                data = json.loads(path.read_text())
                return cls(
                    data["token_id"], data["token_secret"], base64.b64decode(data["signing_key"]), path
                )
            except (ValueError, KeyError):
                time.sleep(0.01)
        raise InvalidRequest(
            f"{path} is not a kiln credentials file; remove it and restart `kiln server` to make new tokens"
        )

    def accepts(self, token_id: str, token_secret: str) -> bool:
        """Whether a client's pair is this server's (in constant time: no timing oracle)."""
        id_ok = hmac.compare_digest(token_id.encode(), self.token_id.encode())
        secret_ok = hmac.compare_digest(token_secret.encode(), self.token_secret.encode())
        return id_ok & secret_ok

    def where(self) -> str:
        """Where a user finds the right pair (for error messages)."""
        return (
            "Use the MODAL_TOKEN_ID and MODAL_TOKEN_SECRET that `kiln server` printed at start "
            f"(also kept in {self.path}), or run your app with `kiln run`, which passes them on."
        )


class SignedUrls:
    """URLs of the HTTP side that only this server can make: for blobs, signed and expiring (an
    upload URL is for one blob ID the server issued and at most the size the client announced);
    for app pages, signed (the client prints them for its user to open later)."""

    def __init__(
        self, key: bytes, base_url: str, ttl: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self.base_url = base_url
        self.ttl = ttl
        self._clock = clock

    def upload(self, blob_id: str, max_bytes: int) -> str:
        return self._url("put", blob_id, max_bytes)

    def download(self, blob_id: str) -> str:
        return self._url("get", blob_id, 0)

    def app_page(self, app_id: str) -> str:
        return f"{self.base_url}/apps/{app_id}?sig={self._sign('page', app_id, 0, 0)}"

    def check_page(self, app_id: str, sig: str) -> None:
        if not hmac.compare_digest(self._sign("page", app_id, 0, 0).encode(), sig.encode()):
            raise InvalidRequest("this app page URL is not one kiln made; use the URL `modal run` printed")

    def _url(self, op: str, blob_id: str, size: int) -> str:
        expires = int(self._clock() + self.ttl)
        sig = self._sign(op, blob_id, size, expires)
        return f"{self.base_url}/blobs/{blob_id}?size={size}&expires={expires}&sig={sig}"

    def request(self, route: str, params: dict[str, str]) -> str:
        """A URL of `route` with `params` that only this server could make, expiring like blob
        URLs: the signature covers the route and every parameter (volume blocks)."""
        fields = {**params, "expires": str(int(self._clock() + self.ttl))}
        query = urlencode(sorted(fields.items()))
        return f"{self.base_url}{route}?{query}&sig={self._sign_request(route, query)}"

    def check_request(self, route: str, query: list[tuple[str, str]]) -> dict[str, str]:
        """The parameters of a URL `request` made; raises InvalidRequest for any other URL (a
        changed, added or missing parameter) or an expired one."""
        fields = [(k, v) for k, v in query if k != "sig"]
        sig = next((v for k, v in query if k == "sig"), "")
        expected = self._sign_request(route, urlencode(sorted(fields)))
        params = dict(fields)
        if len(params) != len(fields) or not hmac.compare_digest(expected.encode(), sig.encode()):
            raise InvalidRequest("this URL is not one kiln signed; ask the server for a new one")
        expires = params.get("expires", "")
        if not expires.isdigit() or int(expires) < self._clock():
            raise InvalidRequest("this URL has expired; ask the server for a new one")
        return params

    def _sign_request(self, route: str, query: str) -> str:
        return hmac.new(self._key, f"request\n{route}\n{query}".encode(), hashlib.sha256).hexdigest()

    def _sign(self, op: str, blob_id: str, size: int, expires: int) -> str:
        message = f"{op}\n{blob_id}\n{size}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, op: str, blob_id: str, size: str, expires: str, sig: str) -> int:
        """The size a valid URL allows (0 for downloads); raises InvalidRequest otherwise."""
        if not (size.isdigit() and expires.isdigit() and len(size) < 20 and len(expires) < 20):
            raise InvalidRequest("this blob URL is not one kiln signed; ask the server for a new one")
        expected = self._sign(op, blob_id, int(size), int(expires))
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise InvalidRequest("this blob URL is not one kiln signed; ask the server for a new one")
        if int(expires) < self._clock():
            raise InvalidRequest("this blob URL has expired; ask the server for a new one")
        return int(size)

    def bearer(self, subject: str, ttl: float = 3600.0) -> str:
        """A bearer token for `subject`, shaped as a JWT (HS256) because the client reads its
        `exp` to know when to fetch a new one."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps({"sub": subject, "exp": int(self._clock() + ttl)}).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}"

    def check_bearer(self, token: str, subject: str) -> bool:
        """Whether `token` is a live bearer token this server made for `subject`."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 2048:
            return False
        expected = _b64(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.encode(), parts[2].encode()):
            return False
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return False
        return bool(claims.get("sub") == subject and float(claims.get("exp", 0)) > self._clock())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """Refuse to serve beyond this machine in clear text unless told to (`--insecure`)."""
    if bool(config.tls_cert) != bool(config.tls_key):
        raise InvalidRequest("--tls-cert and --tls-key go together: give both, or neither")
    if not is_loopback(config.host) and not config.tls_cert and not config.insecure:
        raise InvalidRequest(
            f"--host {config.host} would serve beyond this machine in clear text (tokens included). "
            "Give a certificate with --tls-cert CERT.pem --tls-key KEY.pem, or pass --insecure to serve "
            "without TLS anyway (only on a network you trust)"
        )


def server_tls(config: Config, alpn: list[str]) -> ssl.SSLContext | None:
    """The server side's TLS context (None without a certificate)."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidRequest(f"cannot load --tls-cert/--tls-key: {exc}") from exc
    context.set_alpn_protocols(alpn)
    return context
