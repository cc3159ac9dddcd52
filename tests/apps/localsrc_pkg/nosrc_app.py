"""An app with `include_source=False`: only what its image adds reaches containers."""

import os

import modal

app = modal.App("kiln-test-localsrc-nosrc", include_source=False)
image = (
    modal.Image.debian_slim()
    .add_local_python_source("localsrc_module")
    .add_local_file("localsrc_pkg/__init__.py", "/root/localsrc_pkg/__init__.py")
    .add_local_file("localsrc_pkg/nosrc_app.py", "/root/localsrc_pkg/nosrc_app.py")
)


@app.function(image=image)
def listing() -> dict:
    import localsrc_module

    pkg = sorted(f for f in os.listdir("/root/localsrc_pkg") if f.endswith(".py"))
    return {"pkg": pkg, "module": localsrc_module.VALUE}


@app.local_entrypoint()
def main():
    print(f"nosrc: {listing.remote()}")
