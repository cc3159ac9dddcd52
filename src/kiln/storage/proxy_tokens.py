"""Proxy tokens: what an HTTP caller presents (`Modal-Key`, `Modal-Secret` headers) to a web
endpoint that requires proxy auth. Only a hash of each secret is kept; a deleted token stops
working at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from kiln.errors import NotFound
from kiln.ids import new_id
from kiln.storage.state import StateStore

_KIND = "proxy_tokens"
_NAMESPACE = "workspace"


@dataclass(frozen=True)
class ProxyToken:
    token_id: str
    name: str
    created_at: float


class ProxyTokens:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    def create(self, name: str = "") -> tuple[ProxyToken, str]:
        """A new token and its secret (shown once: only its hash is kept)."""
        token = ProxyToken(new_id("wk"), name, time.time())
        secret = "ws-" + secrets.token_urlsafe(24)
        self._save(token, _digest(secret))
        return token, secret

    def _save(self, token: ProxyToken, digest: str) -> None:
        data = {"name": token.name, "created_at": token.created_at, "sha256": digest}
        self.state.put(_KIND, token.token_id, data, name=token.token_id, namespace=_NAMESPACE)

    def rename(self, token_id: str, name: str) -> ProxyToken:
        data = self.state.get(_KIND, token_id)
        if data is None:
            raise NotFound(f"Proxy token {token_id} not found")
        token = ProxyToken(token_id, name, data["created_at"])
        self._save(token, data["sha256"])
        return token

    def list(self) -> list[ProxyToken]:
        return [
            ProxyToken(i, d["name"], d["created_at"]) for i, _, d, _ in self.state.named(_KIND, _NAMESPACE)
        ]

    def delete(self, token_id: str) -> None:
        self.state.delete(_KIND, token_id)

    def verify(self, token_id: str, secret: str) -> bool:
        data = self.state.get(_KIND, token_id[:64]) if token_id else None
        return data is not None and hmac.compare_digest(data["sha256"], _digest(secret))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
