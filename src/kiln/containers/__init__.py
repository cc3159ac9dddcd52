"""Containers: a spec (root filesystem layers, mounts, env, command) and a runtime that starts it.

This package knows nothing about functions or images: it runs a command in a sandbox.
"""

from kiln.containers.bubblewrap import BubblewrapRuntime, check_sandbox_support
from kiln.containers.container import Container
from kiln.containers.spec import Bind, ContainerSpec, ExitStatus, OutputSink

__all__ = [
    "Bind",
    "BubblewrapRuntime",
    "Container",
    "ContainerSpec",
    "ExitStatus",
    "OutputSink",
    "check_sandbox_support",
]
