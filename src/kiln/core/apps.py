"""Apps: a running (or deployed) collection of functions, with one log stream."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from kiln.errors import NotFound
from kiln.ids import new_id
from kiln.streams import LogBuffer


class AppState(enum.IntEnum):
    # Values match the Modal protocol's AppState, the vocabulary users see in `modal app list`.
    EPHEMERAL = 1
    DETACHED = 2
    DEPLOYED = 3
    STOPPING = 4
    STOPPED = 5
    INITIALIZING = 6
    DISABLED = 7
    DETACHED_DISCONNECTED = 8
    DERIVED = 9


@dataclass
class App:
    app_id: str
    description: str
    state: AppState
    environment: str = ""
    name: str = ""
    frontend: str = "modal"
    version: int = 0  # the deployed version serving now (0: never deployed)
    created_at: float = field(default_factory=time.time)
    stopped_at: float = 0.0
    last_heartbeat: float = field(default_factory=time.monotonic)
    function_ids: dict[str, str] = field(default_factory=dict)  # tag → function ID
    class_ids: dict[str, str] = field(default_factory=dict)  # tag → class ID
    logs: LogBuffer | None = None  # read back from disk when first needed (Core.app_logs)

    @property
    def running(self) -> bool:
        return self.state not in (AppState.STOPPED, AppState.STOPPING)


class Apps:
    def __init__(self) -> None:
        self.apps: dict[str, App] = {}

    def create(
        self, description: str, state: AppState, environment: str = "", frontend: str = "modal"
    ) -> App:
        app = App(new_id("ap"), description, state, environment, frontend=frontend)
        self.apps[app.app_id] = app
        return app

    def add(self, app: App) -> None:
        self.apps[app.app_id] = app

    def get(self, app_id: str) -> App:
        app = self.apps.get(app_id)
        if app is None:
            raise NotFound(
                f"App {app_id} not found on this kiln server (it may have been stopped or the server restarted)"
            )
        return app

    def by_name(self, name: str, environment: str = "") -> App | None:
        """The running app deployed (or published) under `name`."""
        matches = [
            a for a in self.apps.values() if a.name == name and a.environment == environment and a.running
        ]
        return max(matches, key=lambda a: a.created_at) if matches else None

    def running_named(self, name: str, environment: str = "") -> App | None:
        """A deployed app of that name, else the newest running app started under that name."""
        app = self.by_name(name, environment)
        if app is None:
            running = [
                a
                for a in self.apps.values()
                if a.running and a.description == name and a.environment == environment
            ]
            app = max(running, key=lambda a: a.created_at) if running else None
        return app
