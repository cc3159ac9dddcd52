"""What a fal runner is: a kiln container of the app's environment that unpickles the function
fal's client shipped and runs it (for an App: uvicorn serving its endpoints on port 8080).

The definition the core keeps for a fal function (`RunnerDefinition`, JSON) holds everything a
runner needs, so a deployed app's runners start again after a restart without the client.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field

from kiln.frontends.fal.environments import AGENT_DIR

APP_PORT = 8080  # where a fal App's uvicorn listens (MachineRequirements.exposed_port)

# Runs in the container. fal's wrapper of `App.initialize_and_serve` is pickled by value (fal
# need not be installed); on the main thread it returns `app.serve()` un-awaited.
RUNNER = """
import asyncio, sys
import cloudpickle
with open(sys.argv[1], "rb") as f:
    function = cloudpickle.loads(f.read())
result = function()
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@dataclass
class RunnerDefinition:
    """A fal function as kiln keeps it."""

    name: str  # the app's name (its alias)
    image_id: str
    function: bytes  # the SerializedObject's `definition` (cloudpickle)
    port: int = APP_PORT
    health_path: str = "/health"
    secret_names: list[str] = field(default_factory=list)
    owner: str = ""
    public: bool = True

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["function"] = base64.b64encode(self.function).decode()
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> RunnerDefinition:
        data = json.loads(raw)
        data["function"] = base64.b64decode(data["function"])
        return cls(**data)


def runner_env(secrets: dict[str, str]) -> dict[str, str]:
    """The runner's environment: the agent's packages after the user's, and the secrets."""
    return {
        **secrets,
        "IS_ISOLATE_AGENT": "1",  # fal's App refuses to start elsewhere
        "PYTHONPATH": AGENT_DIR,
        "PYTHONUNBUFFERED": "1",
    }
