"""The app bench_scaling.py drives: each function returns which container ran it, and when."""

import os
import time

import modal

app = modal.App("kiln-bench-scaling")
image = modal.Image.debian_slim()


def timed(seconds: float) -> tuple[str, float, float]:
    started = time.time()
    time.sleep(seconds)
    return os.environ["MODAL_TASK_ID"], started, time.time()


@app.function(image=image, max_containers=1)
@modal.concurrent(max_inputs=100)
def concurrent_sleep(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, max_containers=10)
def burst(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, retries=modal.Retries(max_retries=5, initial_delay=1.0, backoff_coefficient=1.0))
def chaos(i: int) -> int:
    time.sleep(0.02)
    return i
