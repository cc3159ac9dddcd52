"""Functions that ask for GPUs (the GPU_REQUEST env var picks what)."""

import os

import modal

app = modal.App("kiln-test-gpu")
request = os.environ.get("GPU_REQUEST", "T4")
gpu: str | list[str] = request.split(",") if "," in request else request


@app.function(image=modal.Image.debian_slim(), gpu=gpu)
def where() -> str:
    return "cuda=" + os.environ.get("CUDA_VISIBLE_DEVICES", "none")


@app.local_entrypoint()
def main():
    print("result:", where.remote())


@app.function(image=modal.Image.debian_slim())
def plain() -> str:
    return "no GPU needed"


@app.local_entrypoint()
def cpu_only():
    # The app declares a GPU function it never calls: Modal accepts that, and so must kiln.
    print("result:", plain.remote())
