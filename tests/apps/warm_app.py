"""Warm and buffer containers (an app of its own: its warm container runs while the app does)."""

import os
import time

import modal

app = modal.App("kiln-test-warm")


@app.function(image=modal.Image.debian_slim(), min_containers=1, buffer_containers=1, scaledown_window=2)
def warm(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["MODAL_TASK_ID"]
