"""cpu= and memory= limits, as a Modal user writes them."""

import time

import modal

app = modal.App("kiln-test-resources")
image = modal.Image.debian_slim()


@app.function(image=image, memory=(128, 256))
def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: the memory is really used
        block[i] = 1
    return len(block) // (1024 * 1024)


@app.function(image=image, cpu=(0.25, 0.25))
def spin(seconds: float) -> tuple[float, float]:
    """Busy-loop for `seconds` of wall time; return (wall, cpu) seconds used."""
    wall_start, cpu_start = time.monotonic(), time.process_time()
    while time.monotonic() - wall_start < seconds:
        pass
    return time.monotonic() - wall_start, time.process_time() - cpu_start
