"""The Modal app the kiln benchmarks run: one no-op function on the default image.

Imported by bench_kiln.py (the client mounts this file into the container, which imports it).
"""

import modal

app = modal.App("kiln-bench")
image = modal.Image.debian_slim()


@app.function(image=image)
def noop(x=None):
    return x
