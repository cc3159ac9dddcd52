"""`Image.debian_slim(python_version=…)` for the version in KILN_PYTHON."""

import os
import sys

import modal

app = modal.App("kiln-test-pythons")
image = modal.Image.debian_slim(python_version=os.environ.get("KILN_PYTHON", "3.11"))


@app.function(image=image)
def version() -> str:
    return sys.version.split()[0]


@app.local_entrypoint()
def main():
    print(f"python-version: {version.remote()}")
