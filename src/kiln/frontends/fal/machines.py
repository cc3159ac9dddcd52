"""fal machine types → kiln resources.

fal names CPU machines by size and GPU machines by their GPU (`GPU-A100`, `GPU-H100`, …). kiln
maps sizes to cgroup limits of comparable shape (the numbers fal documents for its own sizes are
its business; these are round values a user can raise with a bigger size) and GPU machines to the
same GPU placement as Modal's `gpu=` (so a machine without that GPU refuses with the fix, or runs
on the CPU with KILN_GPU_FALLBACK=cpu). An unknown type is refused with the list of known ones.
"""

from __future__ import annotations

from kiln.core.functions import Resources
from kiln.core.gpus import KNOWN_GPUS
from kiln.errors import InvalidRequest

# size → (millicores, MiB)
SIZES = {
    "XS": (1000, 1024),
    "S": (2000, 2048),
    "M": (4000, 8192),
    "L": (8000, 32768),
    "XL": (16000, 65536),
}


def resources(machine_types: list[str], num_gpus: int = 0) -> Resources:
    """The resources of the first machine type (fal tries them in order; one machine has one)."""
    if not machine_types:
        return Resources(milli_cpu=SIZES["XS"][0], memory_mb=SIZES["XS"][1])
    name = machine_types[0].strip().upper()
    if name in SIZES:
        cpu, memory = SIZES[name]
        return Resources(milli_cpu=cpu, memory_mb=memory)
    if name.startswith("GPU"):
        gpu = name.removeprefix("GPU").lstrip("-_") or "ANY"
        if gpu not in KNOWN_GPUS:
            raise InvalidRequest(
                f"machine_type {machine_types[0]!r}: kiln knows the GPUs "
                f"{', '.join('GPU-' + g for g in sorted(KNOWN_GPUS) if g != 'ANY')} (or GPU for any)"
            )
        return Resources(gpu_type=gpu, gpu_count=max(1, num_gpus))
    raise InvalidRequest(
        f"machine_type {machine_types[0]!r} is not one kiln knows: use {', '.join(SIZES)} or GPU-<type> "
        "(e.g. GPU-A100)"
    )
