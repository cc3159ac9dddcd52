"""GPUs: validating what a function asks for, finding what this machine has, and choosing
devices for a container. Decisions are pure functions; only `detect_gpus` looks at the machine.

Modal's GPU names (`gpu="T4"`, `"h100:2"`, `"A100-80GB"`, `"any"`) are matched against the
product names the NVIDIA driver reports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from kiln.errors import InvalidRequest

# Modal's GPU types → what must appear in the driver's product name (all of the words).
KNOWN_GPUS: dict[str, tuple[str, ...]] = {
    "T4": ("T4",),
    "L4": ("L4",),
    "A10G": ("A10",),
    "A10": ("A10",),
    "A100": ("A100",),
    "A100-40GB": ("A100", "40GB"),
    "A100-80GB": ("A100", "80GB"),
    "L40S": ("L40S",),
    "H100": ("H100",),
    "H100!": ("H100",),
    "H200": ("H200",),
    "B200": ("B200",),
    "ANY": (),
}
MAX_GPUS_PER_CONTAINER = 8


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    memory_mb: int = 0


def describe(gpu_type: str, count: int) -> str:
    return gpu_type if count == 1 else f"{gpu_type}:{count}"


def validate(gpu_type: str, count: int) -> None:
    """Raise InvalidRequest naming the valid choices for an unknown type or a bad count."""
    if gpu_type.upper() not in KNOWN_GPUS:
        valid = ", ".join(sorted(k for k in KNOWN_GPUS if k != "ANY")) + ", any"
        raise InvalidRequest(
            f'Unknown GPU type {gpu_type!r}. Valid GPU types: {valid} (e.g. gpu="H100" or gpu="a100-80gb:2").'
        )
    if not 1 <= count <= MAX_GPUS_PER_CONTAINER:
        raise InvalidRequest(
            f"Invalid GPU count {count} in gpu={describe(gpu_type, count)!r}: a container can have 1 to "
            f"{MAX_GPUS_PER_CONTAINER} GPUs."
        )


def matches(gpu_type: str, device: GpuDevice) -> bool:
    """Whether a device is of the requested type: every word of the type is one of the product
    name's tokens, give or take a letter suffix ("A10" is "A10G" but not "A100"; "L4" is not "L40S")."""
    tokens = re.split(r"[\s\-_]+", device.name.upper())

    def has(word: str) -> bool:
        return any(
            t == word or (len(t) == len(word) + 1 and t.startswith(word) and t[-1].isalpha()) for t in tokens
        )

    return all(has(word) for word in KNOWN_GPUS[gpu_type.upper()])


def choose_devices(gpu_type: str, count: int, devices: list[GpuDevice], busy: set[int]) -> list[int] | None:
    """Indices of `count` free matching devices, or None if there are not enough right now."""
    free = [d.index for d in devices if d.index not in busy and matches(gpu_type, d)]
    return free[:count] if len(free) >= count else None


def capacity(gpu_type: str, count: int, devices: list[GpuDevice]) -> int:
    """How many containers of this request the machine can hold at once."""
    return len([d for d in devices if matches(gpu_type, d)]) // count


def detect_gpus() -> list[GpuDevice]:
    """The NVIDIA GPUs of this machine (none without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        return []
    devices = []
    for line in result.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            devices.append(GpuDevice(int(parts[0]), parts[1], int(float(parts[2] or 0))))
    return devices
