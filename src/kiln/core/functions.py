"""Function definitions as the core sees them: what to run and how to schedule it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Autoscaling:
    min_containers: int = 0
    max_containers: int | None = None  # None: unlimited
    buffer_containers: int = 0
    scaledown_window: float = 60.0


@dataclass
class FunctionDef:
    """A deployable unit of work. `definition` is the frontend's own description of it (for the
    Modal frontend: the serialized `Function` message containers are started with)."""

    function_id: str
    app_id: str
    tag: str
    image_id: str = ""
    mount_ids: list[str] = field(default_factory=list)
    secret_ids: list[str] = field(default_factory=list)
    timeout: float = 300.0
    max_inputs: int = 1  # inputs one container runs at once
    target_inputs: int = 1  # inputs per container the autoscaler aims for
    batch_max_size: int = 0
    is_generator: bool = False
    single_use: bool = False
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    definition: bytes = b""
    needs_client_deps: bool = False
