"""A float class parameter: only str, int, bool and bytes are supported."""

import modal

app = modal.App("kiln-test-bad-cls-float")


@app.cls(image=modal.Image.debian_slim())
class WithFloat:
    ratio: float = modal.parameter(default=0.5)

    @modal.method()
    def hello(self) -> float:
        return self.ratio
