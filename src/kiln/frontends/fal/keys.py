"""Who may use fal's APIs: kiln's own token pair (`FAL_KEY=<token id>:<token secret>`, what
`kiln server` prints) or a user key made with `fal keys create` (revocable; only a hash of its
secret is kept, in their own namespace of the proxy-token room, so a fal key never opens a Modal
web endpoint nor the other way round). The same check guards the gRPC control plane (metadata
`auth-key-id`/`auth-key`) and the HTTP hosts (`Authorization: Key <id>:<secret>`)."""

from __future__ import annotations

from typing import Any

import isolate_proto as fal_pb

from kiln.auth import Credentials
from kiln.errors import NotFound
from kiln.frontends.modal.dispatch import CallContext
from kiln.storage.proxy_tokens import ProxyTokens
from kiln.storage.state import StateStore


class FalAuth:
    def __init__(self, credentials: Credentials, state: StateStore) -> None:
        self.credentials = credentials
        self.keys = ProxyTokens(state, namespace="fal-keys", id_prefix="fk", secret_prefix="fs-")

    def accepts(self, key_id: str, secret: str) -> bool:
        return self.credentials.accepts(key_id, secret) or self.keys.verify(key_id, secret)

    def accepts_header(self, scope: Any) -> bool:
        """An HTTP request's `Authorization: Key <id>:<secret>`."""
        headers = {bytes(k).lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers", [])}
        value = headers.get(b"authorization", "")
        if not value.lower().startswith("key "):
            return False
        key_id, _, secret = value[4:].strip().partition(":")
        return self.accepts(key_id, secret)


class KeyHandlers:
    """`fal keys create|list|revoke`."""

    def __init__(self, auth: FalAuth) -> None:
        self.auth = auth

    async def CreateUserKey(
        self, req: fal_pb.CreateUserKeyRequest, ctx: CallContext
    ) -> fal_pb.CreateUserKeyResponse:
        key, secret = self.auth.keys.create(req.alias)
        return fal_pb.CreateUserKeyResponse(key_id=key.token_id, key_secret=secret)

    async def ListUserKeys(
        self, req: fal_pb.ListUserKeysRequest, ctx: CallContext
    ) -> fal_pb.ListUserKeysResponse:
        response = fal_pb.ListUserKeysResponse()
        for key in self.auth.keys.list():
            info = response.user_keys.add(key_id=key.token_id, alias=key.name)
            info.created_at.FromSeconds(int(key.created_at))
        return response

    async def RevokeUserKey(
        self, req: fal_pb.RevokeUserKeyRequest, ctx: CallContext
    ) -> fal_pb.RevokeUserKeyResponse:
        if not any(key.token_id == req.key_id for key in self.auth.keys.list()):
            raise NotFound(f"No fal key {req.key_id!r} on this kiln server")
        self.auth.keys.delete(req.key_id)
        return fal_pb.RevokeUserKeyResponse()
