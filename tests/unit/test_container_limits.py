"""Every container's cgroups: a pids limit and a memory ceiling, on cgroup v2 and v1 layouts
(fake hierarchies in a temporary directory: the kernel's files are plain files here)."""

from __future__ import annotations

from pathlib import Path

from kiln.containers.cgroups import Cgroups
from kiln.containers.seccomp import DENIED, filter_bpf


def _v2(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.procs").write_text("")
    (root / "cgroup.subtree_control").write_text("")
    return root


def _v1(root: Path) -> Path:
    for controller in ("memory", "cpu", "pids"):
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    return root


def test_v2_groups_get_pids_and_memory_limits_with_the_controllers_enabled(tmp_path: Path) -> None:
    root = _v2(tmp_path / "cg")
    group = Cgroups(root).create("c1", cpu_limit=0, memory_limit_mb=512, pids_max=64)
    assert group is not None and group.v2
    (path,) = group.dirs
    assert (path / "pids.max").read_text() == "64"
    assert (path / "memory.max").read_text() == str(512 * 2**20)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (path.parent / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_v1_groups_get_a_pids_group_beside_memory(tmp_path: Path) -> None:
    root = _v1(tmp_path / "cg")
    group = Cgroups(root).create("c1", cpu_limit=0, memory_limit_mb=256, pids_max=2048)
    assert group is not None and not group.v2
    names = {d.parts[-4] for d in group.dirs}  # <root>/<controller>/kiln/<pid>/c1
    assert names == {"memory", "pids"}
    pids = next(d for d in group.dirs if d.parts[-4] == "pids")
    assert (pids / "pids.max").read_text() == "2048"
    assert str(pids / "cgroup.procs") in group.procs_files


def test_a_pids_limit_alone_still_makes_a_group(tmp_path: Path) -> None:
    group = Cgroups(_v1(tmp_path / "cg")).create("c1", cpu_limit=0, memory_limit_mb=0, pids_max=10)
    assert group is not None and len(group.dirs) == 1


def test_the_seccomp_filter_compiles_and_denies_what_makes_namespaces_and_mounts() -> None:
    assert {"mount", "unshare", "setns", "keyctl", "bpf", "perf_event_open", "init_module"} <= set(DENIED)
    program = filter_bpf()
    assert program and len(program) % 8 == 0  # cBPF: 8-byte instructions


def test_groups_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    root = _v1(tmp_path / "cg")
    gone = root / "pids" / "kiln" / "999999999" / "c1"  # no such process
    gone.mkdir(parents=True)
    mine = Cgroups(root)
    group = mine.create("c2", cpu_limit=0, memory_limit_mb=0, pids_max=10)
    assert group is not None
    mine.remove_stale()
    assert not gone.parent.exists()
    assert group.dirs[0].exists()  # this server's own stay
