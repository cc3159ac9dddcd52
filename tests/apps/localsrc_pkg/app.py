"""Module mode (`modal run -m localsrc_pkg.app`): the package is the app's source."""

import os

import modal

app = modal.App("kiln-test-localsrc-pkg")
image = modal.Image.debian_slim()
# Without the package's source, the container still needs this module and its package marker.
only_this_module = image.add_local_file(
    "localsrc_pkg/__init__.py", "/root/localsrc_pkg/__init__.py"
).add_local_file("localsrc_pkg/app.py", "/root/localsrc_pkg/app.py")


@app.function(image=image)
def with_source() -> list:
    return sorted(f for f in os.listdir("/root/localsrc_pkg") if f.endswith(".py"))


@app.function(image=only_this_module, include_source=False)
def without_source() -> list:
    return sorted(f for f in os.listdir("/root/localsrc_pkg") if f.endswith(".py"))


@app.local_entrypoint()
def main():
    print(f"with-source: {with_source.remote()}")
    print(f"without-source: {without_source.remote()}")
