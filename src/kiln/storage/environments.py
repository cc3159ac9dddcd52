"""Environments: the names that scope apps and named objects. "main" is the default and always
exists; others are created and deleted by users (`modal environment create|list|delete`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kiln.errors import InvalidRequest, NotFound
from kiln.storage.state import StateStore

_KIND = "environments"
_NAMESPACE = "workspace"
DEFAULT = "main"


@dataclass(frozen=True)
class Environment:
    name: str
    created_at: float
    default: bool = False


class Environments:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._started = time.time()  # "main"'s creation, as far as anyone can tell

    def list(self) -> list[Environment]:
        created = [
            Environment(name, data["created_at"]) for _, name, data, _ in self.state.named(_KIND, _NAMESPACE)
        ]
        return [Environment(DEFAULT, self._started, default=True), *sorted(created, key=lambda e: e.name)]

    def create(self, name: str) -> Environment:
        if name == DEFAULT or self.state.find(_KIND, name, _NAMESPACE) is not None:
            raise InvalidRequest(f"Environment {name!r} already exists")
        environment = Environment(name, time.time())
        self.state.put(_KIND, name, {"created_at": environment.created_at}, name=name, namespace=_NAMESPACE)
        return environment

    def delete(self, name: str) -> None:
        if name == DEFAULT:
            raise InvalidRequest("The default environment 'main' cannot be deleted")
        if self.state.find(_KIND, name, _NAMESPACE) is None:
            raise NotFound(f"Environment {name!r} not found (see `modal environment list`)")
        self.state.delete(_KIND, name)
