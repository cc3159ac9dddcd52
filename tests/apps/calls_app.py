"""Call semantics: remote/local, map/starmap/for_each, spawn/get/gather, generators, async."""

import asyncio
import time

import modal

app = modal.App("kiln-test-calls")
image = modal.Image.debian_slim()


@app.function(image=image)
def square(x: int) -> int:
    return x * x


@app.function(image=image)
def add(a: int, b: int = 0) -> int:
    return a + b


@app.function(image=image)
def fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd input {x}")
    return x


@app.function(image=image)
@modal.concurrent(max_inputs=8)
def delayed(x: int, delay: float) -> int:
    """Returns x after `delay` seconds; concurrent, so fast inputs can finish before slow ones."""
    time.sleep(delay)
    return x


@app.function(image=image)
def countdown(n: int):
    yield from range(n, 0, -1)


@app.function(image=image)
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@app.function(image=image)
def reversed_bytes(data: bytes) -> bytes:
    """Large arguments and results travel as blobs (over 2 MiB)."""
    return data[::-1]
