"""Version 2 of the app in history_app_v1.py: other code for `answer`, and a function v1 lacks."""

import modal

app = modal.App("kiln-test-history")


@app.function(image=modal.Image.debian_slim())
def answer(x: int) -> str:
    return f"v2:{x * 10}"


@app.function(image=modal.Image.debian_slim())
def added_in_v2() -> str:
    return "only in v2"
