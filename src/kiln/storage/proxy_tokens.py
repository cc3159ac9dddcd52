"""Proxy tokens: what an HTTP caller presents (`Modal-Key`, `Modal-Secret` headers) to a web
endpoint that requires proxy auth. Only a hash of each secret is kept; a deleted token stops
working at once. The same room keeps other kinds of id/secret pairs apart by namespace (fal's
user keys): a pair of one namespace never verifies in another."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

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
    def __init__(
        self,
        state: StateStore,
        namespace: str = _NAMESPACE,
        id_prefix: str = "wk",
        secret_prefix: str = "ws-",
    ) -> None:
        self.state = state
        self.namespace = namespace
        self.id_prefix = id_prefix
        self.secret_prefix = secret_prefix

    def create(self, name: str = "") -> tuple[ProxyToken, str]:
        """A new token and its secret (shown once: only its hash is kept)."""
        token = ProxyToken(new_id(self.id_prefix), name, time.time())
        secret = self.secret_prefix + secrets.token_urlsafe(24)
        self._save(token, _digest(secret))
        return token, secret

    def _save(self, token: ProxyToken, digest: str) -> None:
        data = {
            "name": token.name,
            "created_at": token.created_at,
            "sha256": digest,
            "namespace": self.namespace,
        }
        self.state.put(_KIND, token.token_id, data, name=token.token_id, namespace=self.namespace)

    def rename(self, token_id: str, name: str) -> ProxyToken:
        data = self._get(token_id)
        if data is None:
            raise NotFound(f"Proxy token {token_id} not found")
        token = ProxyToken(token_id, name, data["created_at"])
        self._save(token, data["sha256"])
        return token

    def list(self) -> list[ProxyToken]:
        return [
            ProxyToken(i, d["name"], d["created_at"])
            for i, _, d, _ in self.state.named(_KIND, self.namespace)
        ]

    def delete(self, token_id: str) -> None:
        if self._get(token_id) is not None:  # never another namespace's
            self.state.delete(_KIND, token_id)

    def verify(self, token_id: str, secret: str) -> bool:
        data = self._get(token_id[:64]) if token_id else None
        return data is not None and hmac.compare_digest(data["sha256"], _digest(secret))

    def _get(self, token_id: str) -> dict[str, Any] | None:
        """A token of this namespace (rows written before namespaces were recorded are proxy tokens)."""
        data = self.state.get(_KIND, token_id)
        return data if data is not None and data.get("namespace", _NAMESPACE) == self.namespace else None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
