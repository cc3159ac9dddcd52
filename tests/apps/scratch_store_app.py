"""Images made of local files only (FROM scratch): they build without a base or a network."""

import os

import modal

app = modal.App("kiln-test-scratch-store")
image = modal.Image.from_scratch().add_local_file(
    os.environ.get("KILN_FILE", "data/context/hello.txt"), "/files/hello.txt", copy=True
)


@app.function(image=image)
def never_called() -> None: ...


@app.local_entrypoint()
def main():
    print("built")
