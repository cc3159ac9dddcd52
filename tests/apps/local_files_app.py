"""Local files in images: mounted at container start (copy=False) or baked into a layer (copy=True)."""

import errno
import os

import modal

app = modal.App("kiln-test-local-files")
MOUNTED = os.environ.get("KILN_MOUNTED_DIR", "data/context")
COPIED = os.environ.get("KILN_COPIED_DIR", "data/context")


def skip_tmp(path) -> bool:
    return path.name.endswith(".tmp")  # an ignore predicate


mounted = (
    modal.Image.debian_slim()
    .add_local_file("data/context/hello.txt", "/files/hello.txt")
    .add_local_dir(MOUNTED, "/data", ignore=["*.skip", "**/cache"])
)
copied = (
    modal.Image.debian_slim()
    .add_local_dir(COPIED, "/copied", copy=True, ignore=skip_tmp)
    .run_commands(
        "cd /copied && find . -type f | sort > /copied-listing.txt && cat $(find . -type f | sort) > /copied-all.txt"
    )
)
sources = modal.Image.debian_slim().add_local_python_source("localsrc_pkg", "localsrc_module")
other = modal.Image.debian_slim().add_local_dir("data/context/sub", "/other")


def tree(root: str) -> dict:
    return {
        os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f)).read()
        for d, _, fs in os.walk(root)
        for f in fs
    }


def write_errno(path: str) -> int:
    try:
        with open(path, "w") as f:
            f.write("overwritten")
    except OSError as exc:
        return exc.errno or -1
    return 0


@app.function(image=mounted)
def read_mounted() -> dict:
    return {
        "data": tree("/data"),
        "file": open("/files/hello.txt").read().strip(),
        "write_data": errno.errorcode.get(write_errno("/data/new.txt"), "ok"),
        "overwrite_data": errno.errorcode.get(write_errno("/data/" + sorted(os.listdir("/data"))[0]), "ok"),
        "write_root": errno.errorcode.get(write_errno("/root/scratch.txt"), "ok"),
        "other": os.path.exists("/other"),
        "source": sorted(f for f in os.listdir("/root") if f.endswith(".py")),
    }


@app.function(image=other)
def read_other() -> dict:
    return {"other": sorted(os.listdir("/other")), "data": os.path.exists("/data")}


@app.function(image=copied)
def read_copied() -> dict:
    return {"listing": open("/copied-listing.txt").read().split(), "all": open("/copied-all.txt").read()}


@app.function(image=sources)
def use_sources() -> list:
    import localsrc_module
    import localsrc_pkg

    return [localsrc_pkg.VALUE, localsrc_module.VALUE]


@app.local_entrypoint()
def main(which: str = "all"):
    for name, function in {
        "mounted": read_mounted,
        "other": read_other,
        "copied": read_copied,
        "sources": use_sources,
    }.items():
        if which in ("all", name):
            print(f"REPORT {name} {function.remote()!r}")
