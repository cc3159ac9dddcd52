import modal

from .helpers import describe

app = modal.App("kiln-test-pkg")
image = modal.Image.debian_slim()


@app.function(image=image)
def labelled(n: int) -> str:
    # Uses the package's own module inside the container: the package must be mounted.
    return describe(list(range(n)))


@app.local_entrypoint()
def main(n: int = 2):
    print(f"pkg result: {labelled.remote(n)}")
