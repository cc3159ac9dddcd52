"""Classes: modal.parameter() fields, @enter/@exit, with_options/with_concurrency/with_batching,
and lookups by name."""

import os
import time
import uuid

import modal
from modal_proto import api_pb2

app = modal.App("kiln-test-classes")
image = modal.Image.debian_slim()

CONTAINER = uuid.uuid4().hex  # one per container (the module is imported once per container)
ENTERS = 0  # @enter calls in this container


def container_config() -> dict[str, object]:
    """What this container was started with, from the ContainerArguments kiln wrote for it."""
    with open(os.environ["MODAL_CONTAINER_ARGUMENTS_PATH"], "rb") as f:
        args = api_pb2.ContainerArguments.FromString(f.read())
    fn = args.function_def
    return {
        "function_id": args.function_id,
        "timeout_secs": fn.timeout_secs,
        "retries": fn.retry_policy.retries,
        "max_containers": fn.autoscaler_settings.max_containers,
        "scaledown_window": fn.autoscaler_settings.scaledown_window,
        "max_concurrent_inputs": fn.max_concurrent_inputs,
        "batch_max_size": fn.batch_max_size,
        "batch_linger_ms": fn.batch_linger_ms,
        "milli_cpu": fn.resources.milli_cpu,
        "memory_mb": fn.resources.memory_mb,
        "memory_mb_max": fn.resources.memory_mb_max,
    }


# kiln takes no memory snapshots, but enter(snap=True) still runs, before the other @enter.
@app.cls(image=image, enable_memory_snapshot=True)
class Params:
    name: str = modal.parameter()
    count: int = modal.parameter(default=3)
    flag: bool = modal.parameter(default=False)
    blob: bytes = modal.parameter(default=b"\x00kiln")

    @modal.enter(snap=True)
    def load(self) -> None:
        self.steps = ["snap"]

    @modal.enter()
    def start(self) -> None:
        global ENTERS
        ENTERS += 1
        self.steps.append("enter")

    @modal.method()
    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "count": self.count,
            "flag": self.flag,
            "blob": self.blob,
            "types": [type(v).__name__ for v in (self.name, self.count, self.flag, self.blob)],
        }

    @modal.method()
    def identity(self) -> tuple[str, int, list[str]]:
        return CONTAINER, ENTERS, self.steps


@app.cls(image=image)
class Plain:
    @modal.enter()
    def start(self) -> None:
        global ENTERS
        ENTERS += 1

    @modal.method()
    def identity(self) -> tuple[str, int]:
        return CONTAINER, ENTERS

    @modal.method()
    def config(self) -> dict[str, object]:
        return container_config()

    @modal.method()
    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return CONTAINER

    @modal.method()
    def env(self, key: str) -> str | None:
        return os.environ.get(key)

    @modal.exit()
    def stop(self) -> None:
        print(f"kiln-exit {CONTAINER}", flush=True)


@app.cls(image=image)
class Batcher:
    @modal.batched(max_batch_size=2, wait_ms=100)
    def sizes(self, xs: list[int]) -> list[int]:
        return [len(xs)] * len(xs)


@app.function(image=image)
def double(x: int) -> int:
    return 2 * x


@app.local_entrypoint()
def exit_on_stop() -> None:
    """@exit runs when the app stops."""
    print(f"kiln-container {Plain().identity.remote()[0]}")


@app.local_entrypoint()
def exit_on_scaledown() -> None:
    """@exit runs when an idle container is scaled down (scaledown_window=2)."""
    quick = Plain.with_options(scaledown_window=2, max_containers=1)
    print(f"kiln-first {quick().identity.remote()[0]}")
    time.sleep(10)
    print(f"kiln-second {quick().identity.remote()[0]}")
