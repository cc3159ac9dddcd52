"""Keeping the layer store bounded: what to evict (pure decisions) and the evicting itself.

Only leaves are removed (a layer with a remaining child is part of that child's image), oldest
last use first; a layer a running container holds is skipped (and so are its ancestors, which
the container holds too). The size cap evicts until the store fits; `kiln image prune` removes
what was not used since a cutoff. Materialized mount trees are pruned the same way: they are
made again from the content store when next used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.images.layer_store import LayerStore
from kiln.locks import exclusive

log = logging.getLogger("kiln.images")

# Layers used this recently are never evicted by the cap: a build or a container start may be
# about to take them (a container holds its layers only once it runs).
RECENT_GRACE = 120.0


@dataclass(frozen=True)
class LayerInfo:
    key: str
    parent: str | None
    size: int
    last_used: float


def evictions(layers: Iterable[LayerInfo], to_free: int, keep: Callable[[str], bool]) -> list[str]:
    """Leaves to remove, least recently used first, until `to_free` bytes are freed.

    `keep(key)` protects a layer (in use, or recent); its ancestors stay as well.
    """
    return _leaves_in_order(layers, keep, lambda freed: freed >= to_free)


def unused_since(layers: Iterable[LayerInfo], cutoff: float, keep: Callable[[str], bool]) -> list[str]:
    """Every layer not used since `cutoff` (leaves before their parents)."""
    old = [layer for layer in layers if layer.last_used < cutoff]
    young_parents = {layer.parent for layer in layers if layer.last_used >= cutoff}
    return _leaves_in_order(old, lambda key: keep(key) or key in young_parents, lambda freed: False)


def _leaves_in_order(
    layers: Iterable[LayerInfo], keep: Callable[[str], bool], done: Callable[[int], bool]
) -> list[str]:
    remaining = {layer.key: layer for layer in layers}
    children: dict[str, int] = {}
    for layer in remaining.values():
        if layer.parent is not None:
            children[layer.parent] = children.get(layer.parent, 0) + 1
    chosen: list[str] = []
    freed = 0
    while not done(freed):
        leaves = [
            layer for layer in remaining.values() if not children.get(layer.key) and not keep(layer.key)
        ]
        if not leaves:
            break
        victim = min(leaves, key=lambda layer: (layer.last_used, layer.key))
        chosen.append(victim.key)
        freed += victim.size
        del remaining[victim.key]
        if victim.parent is not None and victim.parent in children:
            children[victim.parent] -= 1
    return chosen


@dataclass
class Collector:
    """Removes layers and mount trees: for the size cap after builds, and for `kiln image prune`."""

    store: LayerStore
    mount_trees: Callable[[], list[Path]] = list
    remove_tree: Callable[[Path], None] = lambda tree: None
    max_bytes: int = 0  # 0: no cap
    protected: set[str] = field(default_factory=set)  # keys of builds in progress (this process)
    clock: Callable[[], float] = time.time

    def infos(self) -> list[LayerInfo]:
        infos = []
        for layer in self.store.all():
            infos.append(LayerInfo(layer.key, layer.parent, self.store.size_of(layer), layer.last_used))
        return infos

    def enforce_cap(self) -> list[str]:
        """Evict least recently used layers until the store fits its size cap."""
        if self.max_bytes <= 0:
            return []
        infos = self.infos()
        over = sum(i.size for i in infos) - self.max_bytes
        if over <= 0:
            return []
        recent = self.clock() - RECENT_GRACE
        last_used = {i.key: i.last_used for i in infos}
        removed = self._remove(
            evictions(infos, over, lambda key: key in self.protected or last_used[key] >= recent)
        )
        if removed:
            log.info(
                "layer store over its cap of %d MB: evicted %d layers", self.max_bytes >> 20, len(removed)
            )
        return removed

    def prune(self, older_than: float) -> tuple[list[str], int]:
        """Remove layers and mount trees unused for `older_than` seconds; returns (layers, trees)."""
        cutoff = self.clock() - older_than
        removed = self._remove(unused_since(self.infos(), cutoff, lambda key: key in self.protected))
        trees = 0
        for tree in self.mount_trees():
            if tree.stat().st_mtime < cutoff:
                with exclusive(tree) as free:
                    if free:
                        self.remove_tree(tree)
                        trees += 1
        self.store.empty_trash()
        return removed, trees

    def _remove(self, keys: list[str]) -> list[str]:
        # A layer turned out to be in use: keep it, and its parent stays because it has a child.
        kept_children: set[str] = set()
        removed = []
        by_key = {layer.key: layer for layer in self.store.all()}
        for key in keys:
            if key in kept_children or not self.store.remove(key):
                parent = by_key[key].parent if key in by_key else None
                if parent:
                    kept_children.add(parent)
                continue
            removed.append(key)
        return removed
