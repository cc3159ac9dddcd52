"""Layer caching: three steps named by KILN_NONCE (KILN_MIDDLE changes the second one), an
optional slow step (KILN_SLOW seconds) and an optional force-built last step (KILN_FORCE_LAST)."""

import os

import modal

app = modal.App(os.environ.get("KILN_APP_NAME", "kiln-test-cache"))
nonce = os.environ.get("KILN_NONCE", "none")
image = (
    modal.Image.from_registry("python:3.11-slim")
    .run_commands(f"echo first-{nonce}")
    .run_commands(f"echo middle-{os.environ.get('KILN_MIDDLE', 'a')}-{nonce}")
)
if os.environ.get("KILN_SLOW"):
    image = image.run_commands(f"sleep {os.environ['KILN_SLOW']} && echo slow-{nonce}")
image = image.run_commands(f"echo last-{nonce}", force_build=bool(os.environ.get("KILN_FORCE_LAST")))


@app.function(image=image)
def hello() -> str:
    return "cache-hello"


@app.local_entrypoint()
def main():
    print(f"result: {hello.remote()}")
