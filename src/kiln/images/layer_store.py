"""Layers on disk: `<root>/<key>/fs` (the files) and `<root>/<key>/layer.json` (what made it).

A layer becomes visible only by an atomic rename of a finished staging directory, so a build
killed mid-way leaves at most a `.staging-*` directory, which the next start removes. The
modification time of `layer.json` is the layer's last use (for least-recently-used eviction);
a layer is removed only while no running container holds it (`containers.readonly`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import containers
from kiln.images.steps import ImageConfig
from kiln.locks import exclusive
from kiln.staging import remove_stale_staging, staging_name


@dataclass
class Layer:
    key: str
    parent: str | None
    step: str
    config: ImageConfig
    empty: bool
    path: Path
    size: int | None = None  # bytes on disk this layer alone accounts for
    last_used: float = 0.0

    @property
    def fs(self) -> Path:
        return self.path / "fs"


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)
        self.empty_trash()

    def get(self, key: str) -> Layer | None:
        meta = self.root / key / "layer.json"
        try:
            data = json.loads(meta.read_text())
            last_used = meta.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Layer(
            key=key,
            parent=data["parent"],
            step=data["step"],
            config=ImageConfig.from_json(data["config"]),
            empty=data["empty"],
            path=self.root / key,
            size=data.get("size"),
            last_used=last_used,
        )

    def all(self) -> list[Layer]:
        """Every layer in the store."""
        layers = [self.get(p.name) for p in self.root.iterdir() if not p.name.startswith(".")]
        return [layer for layer in layers if layer is not None]

    def chain(self, key: str) -> list[Layer]:
        """The layer and its ancestors, topmost first."""
        layers = []
        current: str | None = key
        while current:
            layer = self.get(current)
            if layer is None:
                raise KeyError(current)
            layers.append(layer)
            current = layer.parent
        return layers

    def lower_dirs(self, key: str) -> list[Path]:
        """Overlay lower directories for an image whose top layer is `key`, topmost first."""
        return [layer.fs for layer in self.chain(key) if not layer.empty]

    def image_layers(self, key: str) -> list[containers.Layer]:
        """The same layers as a container spec names them (by key), topmost first."""
        return [containers.Layer(containers.IMAGE, layer.key) for layer in self.chain(key) if not layer.empty]

    def fs_path(self, key: str) -> Path:
        """Where a layer's files lie (what a runtime on this machine mounts for it)."""
        return self.root / key / "fs"

    @contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A directory to build a layer's files in; removed unless committed."""
        staging = self.root / staging_name()
        (staging / "fs").mkdir(parents=True)
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def commit(
        self,
        staging: Path,
        key: str,
        parent: str | None,
        step: str,
        config: ImageConfig,
        replace: bool = False,
    ) -> Layer:
        """Publish a staged layer under `key` (atomically)."""
        fs = staging / "fs"
        empty = not any(fs.iterdir())
        meta = {
            "parent": parent,
            "step": step,
            "config": config.to_json(),
            "empty": empty,
            "created_at": time.time(),
            "size": disk_usage(fs),
        }
        (staging / "layer.json").write_text(json.dumps(meta, indent=1))
        target = self.root / key
        if target.exists():
            if not replace:
                shutil.rmtree(staging, ignore_errors=True)
                layer = self.get(key)
                assert layer is not None
                return layer
            self._discard(target)
        os.rename(staging, target)
        layer = self.get(key)
        assert layer is not None
        return layer

    def size_of(self, layer: Layer) -> int:
        """The layer's size, measured once (layers made before sizes were recorded)."""
        if layer.size is None:
            layer.size = disk_usage(layer.fs) if layer.fs.exists() else 0
            meta = layer.path / "layer.json"
            data = json.loads(meta.read_text())
            data["size"] = layer.size
            tmp = layer.path / f".layer.json.{uuid.uuid4().hex[:8]}"
            tmp.write_text(json.dumps(data, indent=1))
            os.utime(tmp, (layer.last_used, layer.last_used))  # measuring is not a use
            os.replace(tmp, meta)
        return layer.size

    def touch(self, key: str) -> None:
        """Record a use of the layer and its ancestors (for least-recently-used eviction)."""
        current: str | None = key
        while current:
            layer = self.get(current)
            if layer is None:
                return
            os.utime(layer.path / "layer.json")
            current = layer.parent

    def remove(self, key: str) -> bool:
        """Delete a layer unless a running container uses it; returns whether it was deleted."""
        path = self.root / key
        with exclusive(path / "fs") as free:
            if not free:
                return False
            trash = self.root / staging_name()
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return True
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _discard(self, path: Path) -> None:
        """Move a replaced layer away; delete it now unless running containers still use it."""
        trash = self.root / f".trash-{uuid.uuid4().hex[:12]}"
        os.rename(path, trash)
        self.empty_trash()

    def empty_trash(self) -> None:
        for trash in self.root.glob(".trash-*"):
            with exclusive(trash / "fs") as free:
                if free:
                    shutil.rmtree(trash, ignore_errors=True)


def disk_usage(root: Path) -> int:
    """Bytes on disk under `root`; a file hard-linked n times counts 1/n (a host snapshot, whose
    files the machine itself holds, costs little)."""
    total = 0
    stack = [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            st = entry.stat(follow_symlinks=False)
            total += st.st_blocks * 512 // max(1, st.st_nlink)
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total
