"""`kiln image ls` and `kiln image prune`: what the layer store holds, and freeing it.

Both work on KILN_HOME directly, also while a server runs: layers that running containers use
are never removed (see `kiln.containers.readonly`).
"""

from __future__ import annotations

import re
import time

import click

from kiln.config import Config
from kiln.ids import stable_id
from kiln.images.gc import Collector
from kiln.images.layer_store import Layer, LayerStore
from kiln.storage.blobs import BlobStore
from kiln.storage.mounts import MountStore
from kiln.storage.state import StateStore

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@click.group("image")
def image() -> None:
    """Inspect and prune the image layer store (in KILN_HOME)."""


@image.command("ls")
@click.option("--layers", "show_layers", is_flag=True, help="Also list every layer.")
def ls(show_layers: bool) -> None:
    """List images (layer chains ending in a layer nothing builds on) with sizes and last use."""
    config = Config()
    store = LayerStore(config.layers_dir)
    layers = {layer.key: layer for layer in store.all()}
    for layer in layers.values():
        store.size_of(layer)
    parents = {layer.parent for layer in layers.values()}
    now = time.time()
    rows = []
    for top in sorted((k for k in layers if k not in parents), key=lambda k: -layers[k].last_used):
        chain = _chain(layers, top)
        size = sum(_size(layer) for layer in chain)
        rows.append(
            [
                stable_id("im", top),
                str(len(chain)),
                _bytes(size),
                _ago(now, layers[top].last_used),
                layers[top].step,
            ]
        )
    total = sum(_size(layer) for layer in layers.values())
    click.echo(f"{len(rows)} images, {len(layers)} layers, {_bytes(total)} in {config.layers_dir}")
    if config.layer_store_max_gb > 0:
        click.echo(f"size cap: {config.layer_store_max_gb:g} GB (KILN_LAYER_STORE_MAX_GB)")
    _table(["IMAGE", "LAYERS", "SIZE", "LAST USED", "TOP STEP"], rows)
    if show_layers:
        click.echo("")
        layer_rows = [
            [
                layer.key[:12],
                (layer.parent or "-")[:12],
                _bytes(_size(layer)),
                _ago(now, layer.last_used),
                layer.step,
            ]
            for layer in sorted(layers.values(), key=lambda layer: -layer.last_used)
        ]
        _table(["LAYER", "PARENT", "SIZE", "LAST USED", "STEP"], layer_rows)


@image.command("prune")
@click.option(
    "--older-than", default="24h", show_default=True, help="Unused for at least this long: 30m, 24h, 7d."
)
@click.option(
    "--all", "everything", is_flag=True, help="Everything no running container uses (--older-than 0)."
)
def prune(older_than: str, everything: bool) -> None:
    """Remove layers and mount trees that no running container uses and that were not used lately."""
    config = Config()
    store = LayerStore(config.layers_dir)
    mounts = MountStore(StateStore(config.state_db), BlobStore(config.blobs_dir), config.mounts_dir)
    sizes = {layer.key: store.size_of(layer) for layer in store.all()}
    collector = Collector(store, mounts.trees, mounts.remove_tree)
    removed, trees = collector.prune(0.0 if everything else _seconds(older_than))
    freed = sum(sizes.get(key, 0) for key in removed)
    click.echo(f"removed {len(removed)} layers ({_bytes(freed)}) and {trees} mount trees")


def _chain(layers: dict[str, Layer], key: str | None) -> list[Layer]:
    chain = []
    while key and key in layers:
        chain.append(layers[key])
        key = layers[key].parent
    return chain


def _size(layer: Layer) -> int:
    return layer.size or 0


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r}: use a number with s, m, h or d (e.g. 24h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _ago(now: float, then: float) -> str:
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, str(row[-1])[:70]]))
