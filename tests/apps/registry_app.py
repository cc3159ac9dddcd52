"""Images from a registry (KILN_REGISTRY_REF), with credentials when KILN_REGISTRY_USER is set."""

import os

import modal

app = modal.App("kiln-test-registry")
ref = os.environ.get("KILN_REGISTRY_REF", "127.0.0.1:9/none:1")
secret = None
if os.environ.get("KILN_REGISTRY_USER"):
    secret = modal.Secret.from_dict(
        {
            "REGISTRY_USERNAME": os.environ["KILN_REGISTRY_USER"],
            "REGISTRY_PASSWORD": os.environ["KILN_REGISTRY_PASSWORD"],
        }
    )

if os.environ.get("KILN_REGISTRY_CASE") == "copy-from":
    # Files out of the registry image, into an image that can run Python.
    image = modal.Image.debian_slim().dockerfile_commands(
        [f"COPY --from={ref} /hello.txt /from-registry/hello.txt"]
    )
else:
    # The registry image itself (no shell, no Python), with a local file on top.
    image = modal.Image.from_registry(ref, secret=secret).add_local_file(
        "data/context/hello.txt", "/added/hello.txt", copy=True
    )


@app.function(image=image)
def read() -> str:
    return open("/from-registry/hello.txt").read()


@app.local_entrypoint()
def main(call: bool = False):
    print("built")
    if call:
        print(f"from-registry: {read.remote()}")
