"""Resource limits are enforced by the kernel (cgroups): memory over the limit is a clear
out-of-memory error; a CPU limit caps the CPU time a container gets."""

from __future__ import annotations

import importlib
from types import ModuleType

import modal.exception
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def resources_app(modal_client: None) -> ModuleType:
    return importlib.import_module("resources_app")


@pytest.mark.timeout(180)
def test_memory_over_the_limit_is_an_out_of_memory_error(resources_app: ModuleType) -> None:
    with resources_app.app.run():
        assert resources_app.allocate.remote(50) == 50  # within the limit
        with pytest.raises(modal.exception.RemoteError) as info:
            resources_app.allocate.remote(600)
        message = str(info.value)
        assert "out of memory" in message and "memory=" in message, message
        assert resources_app.allocate.remote(10) == 10  # a new container serves the next input


@pytest.mark.timeout(180)
def test_cpu_limit_caps_cpu_time(resources_app: ModuleType) -> None:
    with resources_app.app.run():
        wall, cpu = resources_app.spin.remote(2.0)
    # A quarter of a core for 2 s of wall time: about 0.5 s of CPU, far from the 2 s it would
    # get unlimited (loose bound: the machine may be busy, which only lowers it further).
    assert wall >= 2.0
    assert cpu < 0.6 * wall, (wall, cpu)
