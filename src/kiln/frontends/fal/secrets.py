"""fal secrets (`fal secrets set|list|unset`): NAME=value pairs per fal environment, kept in kiln's
secrets room (namespace `fal:<environment>`, apart from Modal's environments, whose names cannot
hold a colon). Runners get them as environment variables (all of the environment's, or the names
an app asks for); builds see those a requirement names as `${NAME}` (never in a key or a log).
"""

from __future__ import annotations

import re

import isolate_proto as fal_pb

from kiln.core.core import Core
from kiln.errors import InvalidRequest, NotFound
from kiln.frontends.modal.dispatch import CallContext

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")


def namespace(environment: str) -> str:
    return f"fal:{environment or 'main'}"


def secret_values(core: Core, environment: str, names: list[str] | None = None) -> dict[str, str]:
    """NAME → value of the fal secrets of `environment` (only `names` when given)."""
    values: dict[str, str] = {}
    for secret in reversed(core.secrets.named(namespace(environment))):
        if names is None or secret.name in names:
            values.update(secret.env)
    missing = sorted(set(names or []) - set(values))
    if missing:
        raise NotFound(f"No fal secret named {', '.join(missing)}; set it with `fal secrets set NAME=value`")
    return values


class SecretHandlers:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def SetSecret(self, req: fal_pb.SetSecretRequest, ctx: CallContext) -> fal_pb.SetSecretResponse:
        if not _NAME.match(req.name):
            raise InvalidRequest(f"{req.name[:100]!r} is not a valid secret name (letters, digits, _)")
        where = namespace(req.environment_name)
        existing = self.core.secrets.lookup(req.name, where)
        if req.HasField("value"):
            self.core.secrets.create({req.name: req.value}, name=req.name, environment=where)
        elif existing is None:
            raise NotFound(f"No fal secret named {req.name!r}")
        if existing is not None:
            self.core.secrets.delete(existing.secret_id)
        return fal_pb.SetSecretResponse()

    async def ListSecrets(
        self, req: fal_pb.ListSecretsRequest, ctx: CallContext
    ) -> fal_pb.ListSecretsResponse:
        response = fal_pb.ListSecretsResponse()
        environment = req.environment_name or "main"
        for secret in self.core.secrets.named(namespace(environment)):
            item = response.secrets.add(name=secret.name, environment_name=environment, default_exposed=True)
            item.created_time.FromSeconds(int(secret.created_at))
        return response
