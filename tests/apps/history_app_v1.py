"""Version 1 of an app deployed twice under one name (see history_app_v2.py) for `modal app history`
and `modal app rollback`."""

import modal

app = modal.App("kiln-test-history")


@app.function(image=modal.Image.debian_slim())
def answer(x: int) -> str:
    return f"v1:{x}"
