"""Functions that mount one Volume (named by KILN_TEST_VOLUME) in several ways: read-write in two
functions (two containers), read-only, and a sub_path. Each test works in a directory of its own."""

import os

import modal

app = modal.App("kiln-test-volumes")
image = modal.Image.debian_slim()
volume = modal.Volume.from_name(
    os.environ.get("KILN_TEST_VOLUME", "kiln-test-volume"), create_if_missing=True
)


@app.function(image=image, volumes={"/data": volume})
def write(volume_id: str, path: str, text: str) -> None:
    """Write a file, then commit (Modal's rule for others to see it)."""
    full = f"/data/{path}"
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    modal.Volume.from_id(volume_id).commit()


@app.function(image=image, volumes={"/vol": volume})
def read(volume_id: str, path: str) -> str | None:
    """In another function's container: reload, then read the file if it is there."""
    modal.Volume.from_id(volume_id).reload()
    full = f"/vol/{path}"
    return open(full).read() if os.path.exists(full) else None


@app.function(image=image, volumes={"/data": volume})
def reload_with_an_open_file(volume_id: str, path: str) -> str:
    with open(f"/data/{path}") as held:
        try:
            modal.Volume.from_id(volume_id).reload()
        except RuntimeError as exc:
            return f"refused: {exc}"
        finally:
            held.close()
    return "reloaded"


@app.function(image=image, volumes={"/data": volume})
def plant_links(directory: str) -> list[str]:
    """What a hostile container may leave in a volume: links to the host's files and directories."""
    base = f"/data/{directory}"
    os.makedirs(base, exist_ok=True)
    os.symlink("/etc/hostname", f"{base}/file-link")
    os.symlink("/etc", f"{base}/dir-link")
    os.symlink("/", f"{base}/root-link")
    return sorted(os.listdir(base))


@app.function(image=image, volumes={"/ro": volume.with_mount_options(read_only=True)})
def write_read_only(path: str) -> str:
    try:
        with open(f"/ro/{path}", "w") as f:
            f.write("nope")
    except OSError as exc:
        return f"refused: {exc.strerror}"
    return "written"


@app.function(image=image, volumes={"/sub": volume.with_mount_options(sub_path="/kiln-sub/inner")})
def use_sub_path(name: str, text: str) -> list[str]:
    with open(f"/sub/{name}", "w") as f:
        f.write(text)
    return sorted(os.listdir("/sub"))


@app.function(image=image, volumes={"/data": volume})
def link_sub_path() -> None:
    """Where another function mounts a sub_path, leave a link to the host's /etc instead."""
    if not os.path.islink("/data/kiln-linked"):
        os.symlink("/etc", "/data/kiln-linked")


@app.function(image=image, volumes={"/sub": volume.with_mount_options(sub_path="/kiln-linked")}, retries=0)
def use_linked_sub_path() -> list[str]:
    return sorted(os.listdir("/sub"))


@app.cls(image=image, volumes={"/mnt/shared": volume})
class Reader:
    @modal.method()
    def read(self, path: str) -> str:
        return open(f"/mnt/shared/{path}").read()
