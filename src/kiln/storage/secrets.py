"""Secrets: named or anonymous sets of environment variables, scoped by environment.

The room frontends call for secrets; its rows live in the state store's `secrets` table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kiln.errors import InvalidRequest
from kiln.ids import new_id
from kiln.storage.state import StateStore

_KIND = "secrets"


@dataclass(frozen=True)
class Secret:
    secret_id: str
    env: dict[str, str]
    created_at: float
    name: str = ""
    environment: str = ""


class Secrets:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    def create(self, env: dict[str, str], name: str = "", environment: str = "") -> Secret:
        """A new secret (named: it becomes what `name` refers to in `environment`)."""
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise InvalidRequest(f"secret key {key!r} is not a valid environment variable name")
        secret = Secret(new_id("st"), dict(env), time.time(), name, environment if name else "")
        self.state.put(
            _KIND,
            secret.secret_id,
            {"env": secret.env, "created_at": secret.created_at},
            name=name or None,
            namespace=secret.environment,
        )
        return secret

    def lookup(self, name: str, environment: str = "") -> Secret | None:
        found = self.state.find(_KIND, name, environment)
        if found is None:
            return None
        secret_id, data = found
        return Secret(secret_id, data["env"], data["created_at"], name, environment)

    def get(self, secret_id: str) -> Secret | None:
        data = self.state.get(_KIND, secret_id)
        return Secret(secret_id, data["env"], data["created_at"]) if data is not None else None

    def env_of(self, secret_ids: list[str]) -> dict[str, str]:
        """The variables of these secrets, in order (later secrets win)."""
        env: dict[str, str] = {}
        for secret_id in secret_ids:
            secret = self.get(secret_id)
            if secret is not None:
                env.update(secret.env)
        return env
