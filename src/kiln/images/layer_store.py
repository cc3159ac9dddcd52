"""Layers on disk: `<root>/<key>/fs` (the files) and `<root>/<key>/layer.json` (what made it).

A layer becomes visible only by an atomic rename of a finished staging directory, so a build
killed mid-way leaves at most a `.staging-*` directory, which the next start removes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln.images.steps import ImageConfig
from kiln.staging import remove_stale_staging, staging_name


@dataclass
class Layer:
    key: str
    parent: str | None
    step: str
    config: ImageConfig
    empty: bool
    path: Path

    @property
    def fs(self) -> Path:
        return self.path / "fs"


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)

    def get(self, key: str) -> Layer | None:
        meta = self.root / key / "layer.json"
        try:
            data = json.loads(meta.read_text())
        except FileNotFoundError:
            return None
        return Layer(
            key=key,
            parent=data["parent"],
            step=data["step"],
            config=ImageConfig.from_json(data["config"]),
            empty=data["empty"],
            path=self.root / key,
        )

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
        }
        (staging / "layer.json").write_text(json.dumps(meta, indent=1))
        target = self.root / key
        if target.exists():
            if not replace:
                shutil.rmtree(staging, ignore_errors=True)
                layer = self.get(key)
                assert layer is not None
                return layer
            trash = self.root / staging_name()
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staging, target)
        layer = self.get(key)
        assert layer is not None
        return layer

    def touch(self, key: str) -> None:
        """Record a use (for least-recently-used eviction)."""
        try:
            os.utime(self.root / key / "layer.json")
        except FileNotFoundError:
            pass
