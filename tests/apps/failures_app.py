"""Failures: user exceptions, unpicklable results, containers that die mid-input."""

import os
import threading

import modal

app = modal.App("kiln-test-failures")
image = modal.Image.debian_slim()


class CustomError(Exception):
    """A user-defined exception type: the client must re-raise this very type."""


def _check(x: int) -> None:
    raise CustomError(f"custom failure for {x}")  # KILN-RAISE-LINE


@app.function(image=image)
def raise_custom(x: int = 7) -> int:
    _check(x)
    return x


@app.function(image=image)
def return_lock():
    return threading.Lock()


@app.function(image=image)
def hard_exit(x: int = 1) -> str:
    if x:
        print("about to os._exit(1)", flush=True)
        os._exit(1)
    return "survived"


@app.function(image=image)
def segfault(x: int = 1) -> str:
    import ctypes

    if x:
        print("about to segfault", flush=True)
        ctypes.string_at(0)
    return "survived"


@app.function(image=image)
def ok(x: int) -> int:
    return x + 1
