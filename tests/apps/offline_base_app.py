"""A debian_slim image built where no Debian archive answers: kiln falls back to a filtered copy
of the host, and must leave the host's secrets out of it."""

import os

import modal

app = modal.App("kiln-test-offline-base")
image = modal.Image.debian_slim().run_commands("echo offline > /made-offline.txt")


@app.function(image=image)
def inspect() -> dict:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError as exc:
            return f"({exc.strerror})"

    return {
        "shadow": read("/etc/shadow"),
        "gshadow": read("/etc/gshadow"),
        "machine_id": read("/etc/machine-id"),
        "ssh": sorted(os.listdir("/etc/ssh")) if os.path.isdir("/etc/ssh") else [],
        "root": sorted(os.listdir("/root")),
        "made": read("/made-offline.txt").strip(),
    }


@app.local_entrypoint()
def main() -> None:
    import json

    print("RESULT " + json.dumps(inspect.remote()))
