"""Sandboxes made from inside a function (they belong to the function's app)."""

import modal

app = modal.App("kiln-test-sandboxes")
image = modal.Image.debian_slim()


@app.function(image=image)
def sandbox_from_inside(word: str) -> dict[str, object]:
    sb = modal.Sandbox.create("cat", image=image, timeout=120)
    process = sb.exec("sh", "-c", f"echo {word} | tr a-z A-Z")
    output = process.stdout.read()
    code = process.wait()
    listed = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id)]
    sb.stdin.write(b"through stdin\n")
    sb.stdin.write_eof()
    sb.stdin.drain()
    sb.wait()
    return {
        "exec": output,
        "code": code,
        "entrypoint": sb.stdout.read(),
        "returncode": sb.returncode,
        "listed": sb.object_id in listed,
    }


@app.function(image=image)
def use_warm_sandbox(name: str) -> str:
    """Take a pre-warmed sandbox by name (made before the call) and run a command in it."""
    sb = modal.Sandbox.from_name("kiln-test-sandboxes", name)
    return sb.exec("cat", "/tmp/warm").stdout.read()
