"""Plain functions: the default image plus a pip_install, as in Modal's first guide."""

import modal

app = modal.App("kiln-test-basics")
image = modal.Image.debian_slim().pip_install("six")


@app.function(image=image)
def square(x: int) -> int:
    return x * x


@app.function(image=image)
def echo(x: int = 1, word: str = "hi") -> str:
    print(f"echo says {word} {x}")
    return f"{word}:{x}"


@app.function(image=image)
def countdown(n: int):
    for i in range(n, 0, -1):
        yield i


@app.local_entrypoint()
def main(n: int = 10):
    print("squares:", sum(square.map(range(n))))
