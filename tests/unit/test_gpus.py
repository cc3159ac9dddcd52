"""GPU requests: validation, matching against driver product names, and device choice."""

import pytest

from kiln.containers.devices import container_devices
from kiln.core.gpus import GpuDevice, capacity, choose_devices, matches, validate
from kiln.errors import InvalidRequest

H100 = GpuDevice(0, "NVIDIA H100 80GB HBM3")
A100_80 = GpuDevice(1, "NVIDIA A100-SXM4-80GB")
A10G = GpuDevice(2, "NVIDIA A10G")
L40S = GpuDevice(3, "NVIDIA L40S")
T4 = GpuDevice(4, "Tesla T4")
ALL = [H100, A100_80, A10G, L40S, T4]


@pytest.mark.parametrize(
    ("gpu_type", "expected"),
    [
        ("H100", [0]),
        ("h100", [0]),
        ("H100!", [0]),
        ("A100", [1]),
        ("A100-80GB", [1]),
        ("A100-40GB", []),
        ("A10G", [2]),  # not the A100
        ("A10", [2]),
        ("L4", []),  # not the L40S
        ("L40S", [3]),
        ("T4", [4]),
        ("any", [0, 1, 2, 3, 4]),
    ],
)
def test_types_match_driver_product_names(gpu_type: str, expected: list[int]) -> None:
    assert [d.index for d in ALL if matches(gpu_type, d)] == expected


@pytest.mark.parametrize("gpu_type", ["X9000", "H1000", "", "cpu"])
def test_unknown_type_is_refused_with_the_valid_ones(gpu_type: str) -> None:
    with pytest.raises(InvalidRequest, match=r"Valid GPU types: .*H100"):
        validate(gpu_type, 1)


@pytest.mark.parametrize("count", [0, -1, 9])
def test_count_must_be_between_one_and_eight(count: int) -> None:
    with pytest.raises(InvalidRequest, match="1 to 8"):
        validate("H100", count)


def test_known_type_and_count_pass() -> None:
    validate("a100-80gb", 2)


def test_choose_devices_takes_free_matching_ones() -> None:
    devices = [GpuDevice(i, "NVIDIA H100 80GB HBM3") for i in range(4)] + [T4]
    assert choose_devices("H100", 2, devices, busy=set()) == [0, 1]
    assert choose_devices("H100", 2, devices, busy={0, 2}) == [1, 3]
    assert choose_devices("H100", 2, devices, busy={0, 1, 2}) is None
    assert choose_devices("T4", 1, devices, busy=set()) == [4]


def test_capacity_counts_whole_containers() -> None:
    devices = [GpuDevice(i, "NVIDIA H100 80GB HBM3") for i in range(3)]
    assert capacity("H100", 2, devices) == 1
    assert capacity("H100", 1, devices) == 3
    assert capacity("A100", 1, devices) == 0


def test_container_sees_only_its_devices() -> None:
    nodes, env = container_devices([1, 3])
    assert "/dev/nvidia1" in nodes and "/dev/nvidia3" in nodes and "/dev/nvidia0" not in nodes
    assert "/dev/nvidiactl" in nodes
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
