"""GPU devices on this machine: what a container gets for the GPUs placement gave it."""

from __future__ import annotations

import os


def container_devices(indices: list[int]) -> tuple[list[str], dict[str, str]]:
    """Device nodes to expose in a container, and its environment, for the chosen GPUs."""
    nodes = [f"/dev/nvidia{i}" for i in indices]
    nodes += ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in indices),
        "NVIDIA_VISIBLE_DEVICES": ",".join(str(i) for i in indices),
    }
    return nodes, env


def present(nodes: list[str]) -> list[str]:
    """The device nodes that exist here (a driver without UVM has no /dev/nvidia-uvm)."""
    return [node for node in nodes if os.path.exists(node)]
