"""Resource limits for containers with Linux control groups (v2, or v1 controllers): cpu,
memory and a pids limit (every container gets one, so a fork bomb stops at its own group).

A container's sandbox joins its group before bubblewrap starts, so everything it runs is
limited. Where the kernel offers no usable controller, limits are not enforced and the server
says so once (kiln still runs: Modal users' code must not break on a machine without cgroups).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kiln.containers")

ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


@dataclass
class Cgroup:
    """One container's groups, one directory per controller hierarchy."""

    dirs: list[Path]
    memory_dir: Path | None
    v2: bool

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this group."""
        if self.memory_dir is None:
            return False
        events = self.memory_dir / ("memory.events" if self.v2 else "memory.oom_control")
        try:
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def remove(self) -> None:
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                pass


class Cgroups:
    """Creates per-container groups under `<hierarchy>/kiln/<server pid>/`."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()
        self._warned = False
        self._base = f"kiln/{os.getpid()}"

    def _v1_dir(self, controller: str) -> Path | None:
        path = self.root / controller
        return path if (path / "cgroup.procs").exists() else None

    def create(self, name: str, cpu_limit: float, memory_limit_mb: int, pids_max: int = 0) -> Cgroup | None:
        """A group enforcing the limits (0 = none), or None when nothing is to be (or can be) enforced."""
        if cpu_limit <= 0 and memory_limit_mb <= 0 and pids_max <= 0:
            return None
        try:
            group = (
                self._create_v2(name, cpu_limit, memory_limit_mb, pids_max)
                if self.v2
                else self._create_v1(name, cpu_limit, memory_limit_mb, pids_max)
            )
        except OSError as exc:
            group = None
            reason = str(exc)
        else:
            reason = "no memory, cpu or pids controller is available"
        if group is None and not self._warned:
            self._warned = True
            log.warning("cannot enforce container cpu/memory/pids limits on this machine (%s)", reason)
        return group

    def _create_v2(self, name: str, cpu_limit: float, memory_limit_mb: int, pids_max: int) -> Cgroup | None:
        controllers = (self.root / "cgroup.controllers").read_text().split()
        if not {"memory", "cpu", "pids"} & set(controllers):
            return None
        self._enable_v2_controllers(controllers)
        path = self.root / self._base / name
        path.mkdir(parents=True, exist_ok=True)
        if memory_limit_mb > 0 and "memory" in controllers:
            (path / "memory.max").write_text(str(memory_limit_mb * 1024 * 1024))
            (path / "memory.swap.max").write_text("0")
        if cpu_limit > 0 and "cpu" in controllers:
            (path / "cpu.max").write_text(f"{int(cpu_limit * _PERIOD_US)} {_PERIOD_US}")
        if pids_max > 0 and "pids" in controllers:
            (path / "pids.max").write_text(str(pids_max))
        return Cgroup([path], path if memory_limit_mb > 0 else None, v2=True)

    def _enable_v2_controllers(self, controllers: list[str]) -> None:
        """Let the groups under kiln's own use the controllers (cgroup v2 enables per level)."""
        wanted = " ".join(f"+{c}" for c in ("cpu", "memory", "pids") if c in controllers)
        directory = self.root
        for part in self._base.split("/"):
            try:
                (directory / "cgroup.subtree_control").write_text(wanted)
            except OSError:
                pass  # a group with processes of its own cannot delegate; limits may then fail
            directory = directory / part
            directory.mkdir(exist_ok=True)
        try:
            (directory / "cgroup.subtree_control").write_text(wanted)
        except OSError:
            pass

    def _create_v1(self, name: str, cpu_limit: float, memory_limit_mb: int, pids_max: int) -> Cgroup | None:
        dirs: list[Path] = []
        memory_dir = None
        memory_root = self._v1_dir("memory")
        if memory_limit_mb > 0 and memory_root is not None:
            memory_dir = memory_root / self._base / name
            memory_dir.mkdir(parents=True, exist_ok=True)
            limit = str(memory_limit_mb * 1024 * 1024)
            (memory_dir / "memory.limit_in_bytes").write_text(limit)
            swap = memory_dir / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(limit)  # memory + swap: no escaping the limit into swap
            dirs.append(memory_dir)
        cpu_root = self._v1_dir("cpu")
        if cpu_limit > 0 and cpu_root is not None:
            cpu_dir = cpu_root / self._base / name
            cpu_dir.mkdir(parents=True, exist_ok=True)
            (cpu_dir / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (cpu_dir / "cpu.cfs_quota_us").write_text(str(int(cpu_limit * _PERIOD_US)))
            dirs.append(cpu_dir)
        pids_root = self._v1_dir("pids")
        if pids_max > 0 and pids_root is not None:
            pids_dir = pids_root / self._base / name
            pids_dir.mkdir(parents=True, exist_ok=True)
            (pids_dir / "pids.max").write_text(str(pids_max))
            dirs.append(pids_dir)
        return Cgroup(dirs, memory_dir, v2=False) if dirs else None

    def _hierarchies(self) -> list[Path]:
        if self.v2:
            return [self.root]
        return [p for p in (self._v1_dir(c) for c in ("memory", "cpu", "pids")) if p]

    def cleanup(self) -> None:
        """Remove this server's (empty) parent groups."""
        for hierarchy in self._hierarchies():
            _remove_group(hierarchy / self._base)

    def remove_stale(self) -> None:
        """Remove the (empty) groups of servers that are gone: a SIGKILLed server leaves its
        containers' groups behind (their processes died with it)."""
        for hierarchy in self._hierarchies():
            parent = hierarchy / "kiln"
            if not parent.is_dir():
                continue
            for base in parent.iterdir():
                if base.name.isdigit() and base.is_dir() and not Path(f"/proc/{base.name}").exists():
                    _remove_group(base)


def _remove_group(base: Path) -> None:
    """rmdir a server's group and its containers' groups (the kernel refuses non-empty ones)."""
    if not base.is_dir():
        return
    for child in base.iterdir():
        if child.is_dir():
            try:
                child.rmdir()
            except OSError:
                pass
    try:
        base.rmdir()
    except OSError:
        pass
