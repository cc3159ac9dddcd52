"""A class with a custom __init__: the client refuses it (use modal.parameter() and @enter)."""

import modal

app = modal.App("kiln-test-bad-cls-init")


@app.cls(image=modal.Image.debian_slim())
class WithInit:
    def __init__(self, name: str) -> None:
        self.name = name

    @modal.method()
    def hello(self) -> str:
        return self.name
