"""The Modal app bench_images.py runs: a pip_install (and a uv_pip_install) of five small
pure-Python packages, and a directory mount (BENCH_MOUNT_DIR)."""

import importlib
import os

import modal

app = modal.App("kiln-bench-images")
PACKAGES = ["six", "idna", "iniconfig", "tomli", "packaging"]

pip_image = modal.Image.debian_slim().pip_install(
    *PACKAGES, force_build=bool(os.environ.get("BENCH_FORCE_PIP"))
)
uv_image = modal.Image.debian_slim().uv_pip_install(
    *PACKAGES, force_build=bool(os.environ.get("BENCH_FORCE_UV"))
)
mount_image = modal.Image.debian_slim()
if os.environ.get("BENCH_MOUNT_DIR"):
    mount_image = mount_image.add_local_dir(os.environ["BENCH_MOUNT_DIR"], "/data")


@app.function(image=pip_image)
def imports() -> list:
    return [importlib.import_module(name).__name__ for name in PACKAGES]


@app.function(image=uv_image)
def uv_imports() -> list:
    return [importlib.import_module(name).__name__ for name in PACKAGES]


@app.function(image=mount_image)
def count_files() -> int:
    return sum(len(files) for _, _, files in os.walk("/data"))


@app.local_entrypoint()
def main(which: str = "imports"):
    function = {"imports": imports, "uv_imports": uv_imports, "count_files": count_files}[which]
    print(f"result: {function.remote()}")
