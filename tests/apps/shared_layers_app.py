"""A Modal image installing one package as fal's `requirements=["toml==0.10.2"]` does."""

import modal

app = modal.App("shared-layers")
image = modal.Image.debian_slim(python_version="3.11").uv_pip_install("toml==0.10.2")


@app.function(image=image)
def version() -> str:
    import toml

    return str(toml.__version__)


@app.local_entrypoint()
def main() -> None:
    print("modal sees toml", version.remote())
