"""Reliability: per-input timeouts, server-side retries with backoff, container deaths, cancellation."""

import os
import time

import modal

app = modal.App("kiln-test-reliability")
image = modal.Image.debian_slim()

ATTEMPTS: dict[str, list[float]] = {}  # key → when each attempt began (this container only)


def task_id() -> str:
    return os.environ["MODAL_TASK_ID"]


@app.function(image=image, timeout=3, max_containers=1)
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return task_id()


@app.function(image=image, timeout=8, max_containers=1)
@modal.concurrent(max_inputs=4)
def shared_sleeper(seconds: float) -> str:
    """Several inputs share a container: one timing out must not cost the others their run."""
    time.sleep(seconds)
    return task_id()


@app.function(
    image=image,
    max_containers=1,  # every attempt runs in this container, so ATTEMPTS sees them all
    retries=modal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=1.0),
)
def flaky(key: str, failures: int) -> list[float]:
    """Fails its first `failures` attempts, then returns when each attempt began."""
    ATTEMPTS.setdefault(key, []).append(time.time())
    if len(ATTEMPTS[key]) <= failures:
        raise ValueError(f"attempt {len(ATTEMPTS[key])} of {key} fails")
    return ATTEMPTS[key]


@app.function(image=image, max_containers=1, retries=2)
def always_fails(key: str) -> None:
    ATTEMPTS.setdefault(key, []).append(time.time())
    raise ValueError(f"attempt {len(ATTEMPTS[key])} of {key} fails")


@app.function(image=image, max_containers=1, retries=modal.Retries(max_retries=4, initial_delay=1.0))
def dies_until(deadline: float) -> str:
    """Kills its own container while the clock is before `deadline`."""
    if time.time() < deadline:
        os._exit(3)
    return task_id()


@app.function(image=image, max_containers=1, timeout=60)
def cancellable(seconds: float) -> str:
    time.sleep(seconds)
    return task_id()
