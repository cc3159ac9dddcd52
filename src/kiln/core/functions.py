"""Function definitions as the core sees them: what to run and how to schedule it."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.core.schedules import Schedule


@dataclass
class Autoscaling:
    min_containers: int = 0
    max_containers: int | None = None  # None: unlimited (the backend's capacity applies)
    buffer_containers: int = 0
    scaledown_window: float = 60.0


@dataclass
class RetryPolicy:
    """Modal's retry policy: `retries` more attempts after the first, with exponential backoff."""

    retries: int = 0
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0  # seconds
    max_delay: float = 60.0  # seconds

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry `retry_number` (1 = the first retry)."""
        delay = self.initial_delay * self.backoff_coefficient ** max(0, retry_number - 1)
        return float(min(delay, self.max_delay))


@dataclass
class Resources:
    """What a container may use. 0 means "not set"."""

    milli_cpu: int = 0  # request
    milli_cpu_max: int = 0  # limit
    memory_mb: int = 0  # request
    memory_mb_max: int = 0  # limit
    gpu_type: str = ""  # e.g. "H100"; "" = no GPU
    gpu_count: int = 0


@dataclass
class FunctionDef:
    """A deployable unit of work. `definition` is the frontend's own description of it (for the
    Modal frontend: the serialized `Function` message containers are started with).

    A *variant* (a parameterized class instance, or `with_options`) is a FunctionDef of its own,
    with its own container pool.
    """

    function_id: str
    app_id: str
    tag: str
    image_id: str = ""
    mount_ids: list[str] = field(default_factory=list)
    secret_ids: list[str] = field(default_factory=list)
    timeout: float = 300.0  # per input
    startup_timeout: float = 300.0  # container start through @enter
    max_inputs: int = 1  # inputs one container runs at once
    target_inputs: int = 1  # inputs per container the autoscaler aims for
    batch_max_size: int = 0
    batch_linger_ms: int = 0
    single_use: bool = False
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resources: Resources = field(default_factory=Resources)
    definition: bytes = b""
    frontend: str = "modal"  # whose containers these are: that frontend's launcher boots them
    schedule: Schedule | None = None  # runs by itself while its app is deployed
    scheduled_input: bytes = b""  # the frontend's encoding of a call with no arguments
    # A server (Modal's `@app.server`): its containers run the user's own HTTP server on this port,
    # and requests are proxied to it instead of arriving as inputs. 0: an ordinary function.
    http_port: int = 0


@dataclass(frozen=True)
class FunctionRecord:
    """A function as the journal keeps it: the frontend's own `definition` and `meta` (opaque to
    the core), from which that frontend rebuilds the FunctionDef after a restart."""

    function_id: str
    app_id: str
    frontend: str
    definition: bytes
    meta: bytes = b""
