"""CLI entry points: a local entrypoint with arguments, single functions, container output."""

import sys

import modal

app = modal.App("kiln-test-cli")
image = modal.Image.debian_slim()


@app.function(image=image)
def triple(x: int) -> int:
    return 3 * x


@app.function(image=image)
def greet(name: str = "nobody", times: int = 1) -> str:
    message = " ".join([f"hello-{name}"] * times)
    print(f"greet: {message}")
    return message


@app.function(image=image)
def chatter(tag: str = "x") -> None:
    print(f"KILN-STDOUT-{tag}", flush=True)
    print(f"KILN-STDERR-{tag}", file=sys.stderr, flush=True)


@app.local_entrypoint()
def main(n: int = 2):
    results = [triple.remote(i) for i in range(n)]
    print(f"cli triples: {results}")
