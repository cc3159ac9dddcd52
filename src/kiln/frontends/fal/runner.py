"""What a fal runner is: a kiln container of the app's environment that unpickles the function
fal's client shipped and runs it (for an App: uvicorn serving its endpoints on port 8080).

The definition the core keeps for a fal function (`RunnerDefinition`, JSON) holds everything a
runner needs, so a deployed app's runners start again after a restart without the client.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kiln.core.functions import Autoscaling, FunctionDef
from kiln.frontends.fal import machines
from kiln.frontends.fal.environments import AGENT_DIR

APP_PORT = 8080  # where a fal App's uvicorn listens (MachineRequirements.exposed_port)

# Runs in the container. fal's wrapper of `App.initialize_and_serve` is pickled by value (fal
# need not be installed); on the main thread it returns `app.serve()` un-awaited.
RUNNER = """
import asyncio, os, sys
if os.path.isdir("/app"):  # app files: importable while unpickling (fal's wrapper adds them later)
    sys.path.insert(0, "/app")
    os.chdir("/app")
import cloudpickle
with open(sys.argv[1], "rb") as f:
    function = cloudpickle.loads(f.read())
result = function()
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


# Runs a `@fal.function` call once (its arguments are baked into the pickle) and writes what it
# returned or raised as JSON: the server never unpickles what a container made; fal's client does.
JOB = """
import base64, json, os, sys, traceback
if os.path.isdir("/app"):
    sys.path.insert(0, "/app")
    os.chdir("/app")
import cloudpickle
with open(sys.argv[1], "rb") as f:
    function = cloudpickle.loads(f.read())
outcome = {"raised": False, "traceback": "", "type": "", "message": ""}
try:
    value = function()
except BaseException as exc:
    value = exc
    outcome.update(raised=True, traceback=traceback.format_exc(), type=type(exc).__name__, message=str(exc))
try:
    data = cloudpickle.dumps(value)
except Exception as exc:
    data = cloudpickle.dumps(RuntimeError(f"the function's result could not be pickled: {exc!r}"))
    outcome.update(raised=True, type="RuntimeError", message=f"the result could not be pickled: {exc!r}")
outcome["definition"] = base64.b64encode(data).decode()
with open(sys.argv[2], "w") as f:
    json.dump(outcome, f)
"""


@dataclass
class RunnerDefinition:
    """A fal function as kiln keeps it."""

    name: str  # the app's name (its alias)
    image_id: str
    function: bytes  # the SerializedObject's `definition` (cloudpickle)
    port: int = APP_PORT
    health_path: str = "/health"
    secret_names: list[str] | None = None  # the fal secrets it gets (None: all of its environment's)
    public: bool = True
    revision: str = ""  # fal's application_id of a deployed app
    files: list[tuple[str, str]] = field(default_factory=list)  # app files: (fal hash, path under /app)
    environment: str = "main"
    # Scheduling, from fal's MachineRequirements.
    machine_types: list[str] = field(default_factory=list)
    num_gpus: int = 0
    max_multiplexing: int = 1
    min_concurrency: int = 0
    max_concurrency: int = 0  # 0: the machine's capacity
    concurrency_buffer: int = 0
    keep_alive: float = 60.0
    request_timeout: float = 3600.0
    startup_timeout: float = 600.0

    @classmethod
    def from_request(cls, name: str, image_id: str, req: Any, **extra: Any) -> RunnerDefinition:
        """From a HostedRun or RegisterApplicationRequest."""
        machine = req.machine_requirements
        return cls(
            name=name,
            image_id=image_id,
            function=req.function.definition,
            port=machine.exposed_port or APP_PORT,
            health_path=req.health_check_config.path or "/health",
            public=req.auth_mode != 0,  # PRIVATE = 0
            environment=req.environment_name or "main",
            machine_types=list(machine.machine_types)
            or ([machine.machine_type] if machine.machine_type else []),
            max_multiplexing=machine.max_multiplexing or 1,
            min_concurrency=machine.min_concurrency,
            max_concurrency=machine.max_concurrency or getattr(req, "max_concurrency", 0),
            concurrency_buffer=machine.concurrency_buffer,
            keep_alive=float(machine.keep_alive or 60),
            request_timeout=float(machine.request_timeout or 3600),
            startup_timeout=float(machine.startup_timeout or 600),
            secret_names=list(req.secrets.names) if req.HasField("secrets") else None,
            files=[(f.hash, f.relative_path) for f in req.files],
            **extra,
        )

    def function_def(self, function_id: str, app_id: str) -> FunctionDef:
        """The core's view: a server function (requests proxied to its port) whose containers
        scale between min and max concurrency, `max_multiplexing` requests each."""
        return FunctionDef(
            function_id=function_id,
            app_id=app_id,
            tag=self.name,
            image_id=self.image_id,
            timeout=self.request_timeout,
            startup_timeout=self.startup_timeout,
            max_inputs=self.max_multiplexing,
            target_inputs=self.max_multiplexing,
            autoscaling=Autoscaling(
                min_containers=self.min_concurrency,
                max_containers=self.max_concurrency or None,
                buffer_containers=self.concurrency_buffer,
                scaledown_window=self.keep_alive,
            ),
            resources=machines.resources(self.machine_types, self.num_gpus),
            definition=self.to_bytes(),
            frontend="fal",
            http_port=self.port,
        )

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["function"] = base64.b64encode(self.function).decode()
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> RunnerDefinition:
        data = json.loads(raw)
        data["function"] = base64.b64decode(data["function"])
        data["files"] = [tuple(pair) for pair in data.get("files", [])]
        return cls(**data)


def runner_env(secrets: dict[str, str]) -> dict[str, str]:
    """The runner's environment: the agent's packages after the user's, and the secrets."""
    return {
        **secrets,
        "IS_ISOLATE_AGENT": "1",  # fal's App refuses to start elsewhere
        "PYTHONPATH": AGENT_DIR,
        "PYTHONUNBUFFERED": "1",
    }
