"""A deployed app that another app's container must not be able to stop or read."""

import modal

app = modal.App("kiln-test-scope-target")
image = modal.Image.debian_slim()


@app.function(image=image)
def echo(text: str) -> str:
    print(f"scope-target-log {text}")
    return f"echo {text}"
