"""Images that cannot be built, each for its own reason (which one: the IMAGE_CASE env var)."""

import os

import modal

app = modal.App("kiln-test-bad-images")
case = os.environ.get("IMAGE_CASE", "ok")
marker = os.environ.get("IMAGE_MARKER", "0")

if case == "failing-run":
    image = modal.Image.debian_slim().run_commands(
        f"echo marker-{marker} && echo about to fail >&2 && exit 3"
    )
elif case == "missing-package":
    image = modal.Image.debian_slim().pip_install("kiln-no-such-package-exists-xyz")
elif case == "unknown-instruction":
    image = modal.Image.debian_slim().dockerfile_commands(["FROM base", "FROBNICATE now"])
elif case == "missing-python":
    image = modal.Image.debian_slim(python_version="3.14")
elif case == "micromamba":
    image = modal.Image.micromamba()
elif case == "gpu-build":
    image = modal.Image.debian_slim().run_commands("true", gpu="any")
elif case == "unreachable-registry":
    image = modal.Image.from_registry(f"127.0.0.1:9/kiln/unreachable-{marker}:1")
elif case == "copy-missing":
    image = modal.Image.debian_slim().dockerfile_commands([f"COPY data/no-such-file-{marker}.txt /x"])
elif case == "missing-local-dir":
    image = modal.Image.debian_slim().add_local_dir(f"no-such-dir-{marker}", "/data")
else:
    image = modal.Image.debian_slim().run_commands(f"echo marker-{marker}")


@app.function(image=image)
def hello() -> str:
    return "hello"


@app.local_entrypoint()
def main():
    print("result:", hello.remote())
