"""Secrets: named or anonymous sets of environment variables, scoped by environment.

The room frontends call for secrets; its rows live in the state store's `secrets` table (0600,
under a 0700 KILN_HOME). An anonymous secret has an owner: the app it was made for (removed when
that app stops) or, made outside any app, EPHEMERAL (removed at the server's next start, as a
client's ephemeral objects do not outlive it). Values never go to a log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kiln.errors import InvalidRequest
from kiln.ids import new_id
from kiln.storage.state import StateStore

_KIND = "secrets"
EPHEMERAL = "*"  # the owner of an anonymous secret made outside any app


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

    def create(self, env: dict[str, str], name: str = "", environment: str = "", owner: str = "") -> Secret:
        """A new secret (named: it becomes what `name` refers to in `environment`; anonymous:
        `owner` is the app it goes away with, or EPHEMERAL)."""
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise InvalidRequest(f"secret key {key[:100]!r} is not a valid environment variable name")
        secret = Secret(new_id("st"), dict(env), time.time(), name, environment if name else "")
        with self.state.transaction():
            self.state.put(
                _KIND,
                secret.secret_id,
                {"env": secret.env, "created_at": secret.created_at},
                name=name or None,
                namespace=secret.environment,
            )
            if owner and not name:
                self.state.execute(f"UPDATE {_KIND} SET owner = ? WHERE id = ?", (owner, secret.secret_id))
        return secret

    def remove_owned_by(self, owner: str) -> int:
        """Remove the anonymous secrets of an app that stopped (or, EPHEMERAL, of gone clients)."""
        count = len(self.state.query(f"SELECT id FROM {_KIND} WHERE owner = ?", (owner,)))
        self.state.execute(f"DELETE FROM {_KIND} WHERE owner = ?", (owner,))
        return count

    def lookup(self, name: str, environment: str = "") -> Secret | None:
        found = self.state.find(_KIND, name, environment)
        if found is None:
            return None
        secret_id, data = found
        return Secret(secret_id, data["env"], data["created_at"], name, environment)

    def get(self, secret_id: str) -> Secret | None:
        data = self.state.get(_KIND, secret_id)
        return Secret(secret_id, data["env"], data["created_at"]) if data is not None else None

    def named(self, environment: str, limit: int = 0, created_before: float = 0.0) -> list[Secret]:
        """The secrets names refer to in `environment` (one per name), newest first; with
        `created_before`, only strictly older ones (the client's pages)."""
        seen: set[str] = set()
        found = []
        for secret_id, name, data, _ in self.state.named(_KIND, environment):
            if name in seen:
                continue  # an older secret under a name a newer one took over
            seen.add(name)
            if created_before and data["created_at"] >= created_before:
                continue
            found.append(Secret(secret_id, data["env"], data["created_at"], name, environment))
        found.sort(key=lambda secret: secret.created_at, reverse=True)
        return found[:limit] if limit else found

    def delete(self, secret_id: str) -> None:
        self.state.delete(_KIND, secret_id)

    def env_of(self, secret_ids: list[str]) -> dict[str, str]:
        """The variables of these secrets, in order (later secrets win)."""
        env: dict[str, str] = {}
        for secret_id in secret_ids:
            secret = self.get(secret_id)
            if secret is not None:
                env.update(secret.env)
        return env
