"""An app whose image has one extra layer named by KILN_TEST_NONCE (so a fresh nonce must build)."""

import os

import modal

app = modal.App("kiln-test-nobuild")
image = modal.Image.debian_slim().run_commands(f"echo kiln-nonce-{os.environ.get('KILN_TEST_NONCE', 'none')}")


@app.function(image=image)
def hello() -> str:
    return "nobuild-hello"


@app.local_entrypoint()
def main():
    print(f"result: {hello.remote()}")
