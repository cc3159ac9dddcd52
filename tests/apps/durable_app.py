"""An app that outlives its server: deployed or run while the tests kill -9 kiln and restart it.

Plain `debian_slim()` with no extra steps, so a fresh KILN_HOME that shares the test layer cache
builds nothing.
"""

import hashlib
import os
import time

import modal

app = modal.App("kiln-test-durable")
image = modal.Image.debian_slim()


@app.function(image=image)
def triple(x: int) -> int:
    return 3 * x


@app.function(image=image, scaledown_window=120)
def slow_double(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return 2 * x


# One container running ten inputs at a time: a map's pace is set by `delay`, not by the cores.
@app.function(image=image, max_containers=1)
@modal.concurrent(max_inputs=10)
def tick(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


@app.function(image=image, scaledown_window=120)
def shout(tag: str) -> str:
    """Prints a line to find in the logs; returns the container's id (the task id)."""
    print(f"KILN-DURABLE-{tag}", flush=True)
    return os.environ["MODAL_TASK_ID"]


def digest(values: list) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


@app.local_entrypoint()
def crunch(n: int = 1000, delay: float = 0.1):
    """A long map; prints progress so a test knows when to pull the plug, then a summary."""
    results = []
    for result in tick.map(range(n), kwargs={"delay": delay}):
        results.append(result)
        if len(results) % 100 == 0:
            print(f"progress {len(results)}", flush=True)
    print(f"crunch: count={len(results)} sum={sum(results)} digest={digest(results)}", flush=True)


@app.local_entrypoint()
def linger(seconds: float = 600):
    """Keeps an ephemeral app running (with its client alive) until killed."""
    print(f"lingering {triple.remote(14)}", flush=True)
    time.sleep(seconds)
