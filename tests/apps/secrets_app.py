"""An anonymous secret (Secret.from_dict) used by a function: its value must reach the function
and nothing else (no log), and its row goes away with the app."""

import hashlib
import os

import modal

app = modal.App("kiln-test-secrets")
image = modal.Image.debian_slim()
secret = modal.Secret.from_dict({"KILN_TEST_SECRET": os.environ.get("KILN_TEST_SECRET_VALUE", "unset")})


@app.function(image=image, secrets=[secret])
def fingerprint() -> str:
    return hashlib.sha256(os.environ["KILN_TEST_SECRET"].encode()).hexdigest()


@app.local_entrypoint()
def main():
    print(f"fingerprint={fingerprint.remote()}")
    print(f"secret_id={secret.object_id}")
