"""A container that never finishes starting: its module import outlasts the startup timeout."""

import os
import time

import modal

app = modal.App("kiln-test-slow-start")

if os.environ.get("MODAL_IS_REMOTE") == "1":
    time.sleep(120)  # in the container only: kiln must give up after startup_timeout


@app.function(image=modal.Image.debian_slim(), startup_timeout=2, timeout=60)
def never_ready() -> str:
    return "unreachable"
