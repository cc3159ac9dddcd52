"""Containers: a spec (layers by content key, mounts, env, command) and a runtime that starts it.

This package knows nothing about functions or images: it runs a command in a sandbox.
"""

from kiln.containers.bubblewrap import BubblewrapRuntime, Isolation, LayerPaths, check_sandbox_support
from kiln.containers.container import Container
from kiln.containers.idmap import IdMap
from kiln.containers.runtime import ContainerHandle, Runtime
from kiln.containers.spec import (
    DEPS,
    IMAGE,
    MOUNT,
    Bind,
    ContainerSpec,
    ExitStatus,
    Layer,
    OutputSink,
    PortForward,
)

__all__ = [
    "DEPS",
    "IMAGE",
    "MOUNT",
    "Bind",
    "BubblewrapRuntime",
    "Container",
    "ContainerHandle",
    "ContainerSpec",
    "ExitStatus",
    "IdMap",
    "Isolation",
    "Layer",
    "LayerPaths",
    "OutputSink",
    "PortForward",
    "Runtime",
    "check_sandbox_support",
]
