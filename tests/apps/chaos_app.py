"""Chaos: many quick inputs with retries, while the test SIGKILLs containers at random."""

import os
import time

import modal

app = modal.App("kiln-test-chaos")


@app.function(
    image=modal.Image.debian_slim(),
    max_containers=4,
    retries=modal.Retries(max_retries=10, initial_delay=1.0, backoff_coefficient=1.0),
)
def work(x: int) -> tuple[int, str]:
    time.sleep(0.005)
    return x * x, os.environ["MODAL_TASK_ID"]
