"""Scaling: container limits, warm and buffer containers, scale-down, single-use containers,
concurrent inputs and batches. Functions return which container ran them, and when."""

import os
import time

import modal

app = modal.App("kiln-test-scaling")
image = modal.Image.debian_slim()


def task_id() -> str:
    return os.environ["MODAL_TASK_ID"]


def timed(seconds: float) -> tuple[str, float, float]:
    started = time.time()
    time.sleep(seconds)
    return task_id(), started, time.time()


@app.function(image=image, max_containers=3)
def capped(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, max_containers=10)
def burst(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, scaledown_window=3)
def quick_scaledown(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, single_use_containers=True, max_containers=2)
def single_use(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, max_containers=1)
@modal.concurrent(max_inputs=100)
def concurrent(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)


@app.function(image=image, max_containers=1)
@modal.batched(max_batch_size=4, wait_ms=1000)
def batched(xs: list[int]) -> list[tuple[int, int, str]]:
    return [(x, len(xs), task_id()) for x in xs]


@app.function(image=image, scaledown_window=60)
def tunable(seconds: float) -> tuple[str, float, float]:
    return timed(seconds)
