"""Proxy tokens (`modal.Workspace.from_context().proxy_tokens`) for web endpoints that require
proxy auth."""

from __future__ import annotations

from google.protobuf import empty_pb2
from modal_proto import api_pb2

from kiln.core.core import Core
from kiln.frontends.modal.dispatch import CallContext, empty
from kiln.storage.proxy_tokens import ProxyToken


class ProxyTokenHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def WorkspaceNameLookup(
        self, req: empty_pb2.Empty, ctx: CallContext
    ) -> api_pb2.WorkspaceNameLookupResponse:
        return api_pb2.WorkspaceNameLookupResponse(workspace_name="kiln", username="kiln")

    async def WebhookTokenCreate(
        self, req: api_pb2.WebhookTokenCreateRequest, ctx: CallContext
    ) -> api_pb2.TokenCreateResponse:
        token, secret = self.core.proxy_tokens.create(req.name)
        return api_pb2.TokenCreateResponse(token_id=token.token_id, token_secret=secret)

    async def WebhookTokenList(
        self, req: empty_pb2.Empty, ctx: CallContext
    ) -> api_pb2.WebhookTokenListResponse:
        return api_pb2.WebhookTokenListResponse(tokens=[_token(t) for t in self.core.proxy_tokens.list()])

    async def WebhookTokenListForEnvironment(
        self, req: api_pb2.WebhookTokenListForEnvironmentRequest, ctx: CallContext
    ) -> api_pb2.WebhookTokenListResponse:
        # kiln's tokens are workspace-wide: every environment sees them all.
        return api_pb2.WebhookTokenListResponse(tokens=[_token(t) for t in self.core.proxy_tokens.list()])

    async def WebhookTokenUpdate(
        self, req: api_pb2.WebhookTokenUpdateRequest, ctx: CallContext
    ) -> api_pb2.WebhookToken:
        return _token(self.core.proxy_tokens.rename(req.token_id, req.name))

    async def WebhookTokenDelete(self, req: api_pb2.TokenDeleteRequest, ctx: CallContext) -> object:
        self.core.proxy_tokens.delete(req.token_id)
        return empty()


def _token(token: ProxyToken) -> api_pb2.WebhookToken:
    return api_pb2.WebhookToken(token_id=token.token_id, name=token.name, created_at=token.created_at)
