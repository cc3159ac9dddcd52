"""Functions that share Dicts and Queues by name with the script that calls them."""

import time

import modal

app = modal.App("kiln-test-storage")
image = modal.Image.debian_slim()


@app.function(image=image)
def answer_dict(name: str) -> str:
    """Read what the local script wrote, and write back."""
    d = modal.Dict.from_name(name)
    seen = d["from-local"]
    d["from-function"] = f"the function saw {seen}"
    return seen


@app.function(image=image, timeout=120)
def consume(queue_name: str, ready_dict: str) -> dict:
    """Block on the queue; the item is the wall-clock time it was put at."""
    q = modal.Queue.from_name(queue_name)
    modal.Dict.from_name(ready_dict)["ready"] = True
    put_at = q.get(timeout=90)
    got_at = time.time()
    return {"latency_ms": (got_at - put_at) * 1000}
