"""Layer files: merged views of layers (COPY --from), layer tarballs, read-only mount paths,
leases on layers in use, and how the layer store decides what to evict."""

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from kiln.containers.readonly import read_only_paths
from kiln.errors import ImageBuildError
from kiln.images.context import materialize_from_layers
from kiln.images.gc import Collector, LayerInfo, evictions, unused_since
from kiln.images.layer_store import LayerStore
from kiln.images.layer_tar import apply_layer
from kiln.images.steps import ImageConfig
from kiln.locks import Leases, exclusive


def write(root: Path, rel: str, text: str = "x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# -- COPY --from: an image's merged view ------------------------------------------------------


def test_merged_view_takes_the_topmost_file_and_merges_directories(tmp_path: Path) -> None:
    lower, upper, out = tmp_path / "lower", tmp_path / "upper", tmp_path / "out"
    write(lower, "app/a.txt", "old-a")
    write(lower, "app/b.txt", "b")
    write(upper, "app/a.txt", "new-a")
    write(upper, "app/c.txt", "c")
    out.mkdir()
    materialize_from_layers([upper, lower], ["/app"], out)
    assert files(out) == {"app/a.txt": "new-a", "app/b.txt": "b", "app/c.txt": "c"}


def test_merged_view_honours_whiteouts_and_globs(tmp_path: Path) -> None:
    lower, upper, out = tmp_path / "lower", tmp_path / "upper", tmp_path / "out"
    write(lower, "bin/gone", "x")
    write(lower, "bin/tool-a", "a")
    write(upper, "bin/tool-b", "b")
    os.mknod(upper / "bin" / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
    out.mkdir()
    materialize_from_layers([upper, lower], ["/bin/tool-*", "/bin/gone"], out)
    assert files(out) == {"bin/tool-a": "a", "bin/tool-b": "b"}


# -- layer tarballs -----------------------------------------------------------------------------


def tar_of(path: Path, entries: dict[str, str | None]) -> Path:
    """A tar with files (text) and directories (None)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in entries.items():
            info = tarfile.TarInfo(name)
            if text is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = text.encode()
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def test_layers_apply_in_order_with_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(tar_of(tmp_path / "1.tgz", {"etc": None, "etc/a": "1", "etc/b": "1", "opt/x/y": "1"}), root)
    apply_layer(
        tar_of(tmp_path / "2.tgz", {"etc/.wh.a": "", "etc/b": "2", "opt/x/.wh..wh..opq": "", "opt/x/z": "2"}),
        root,
    )
    assert files(root) == {"etc/b": "2", "opt/x/z": "2"}


def test_layer_entries_leaving_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageBuildError, match="outside"):
        apply_layer(tar_of(tmp_path / "bad.tgz", {"../escape": "x"}), root)
    os.symlink("/tmp", root / "link")
    with pytest.raises(ImageBuildError, match="symlink"):
        apply_layer(tar_of(tmp_path / "bad2.tgz", {"link/escape": "x"}), root)
    assert not (tmp_path / "escape").exists()


# -- read-only mount paths ----------------------------------------------------------------------


def test_mount_paths_are_bound_at_the_largest_subtree_the_image_lacks(tmp_path: Path) -> None:
    image, source, data = tmp_path / "image", tmp_path / "m1", tmp_path / "m2"
    write(image, "root/.bashrc")
    write(image, "usr/lib/x")
    write(source, "root/app.py")
    write(source, "root/pkg/__init__.py")
    write(data, "data/big/file")
    write(data, "usr/lib/extra/y")
    paths = read_only_paths([source, data], [image])
    assert paths == ["/data", "/root/app.py", "/root/pkg", "/usr/lib/extra"]


def test_leases_block_exclusive_use_until_released(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    with exclusive(layer) as free:
        assert free
    leases = Leases()
    first = leases.acquire([layer, tmp_path / "missing"])
    second = leases.acquire([layer])
    assert first == second == [layer]
    with exclusive(layer) as free:
        assert not free
    leases.release(first)
    with exclusive(layer) as free:
        assert not free  # the second container still runs on it
    leases.release(second)
    with exclusive(layer) as free:
        assert free


# -- what to evict ------------------------------------------------------------------------------


def info(key: str, parent: str | None, size: int, last_used: float) -> LayerInfo:
    return LayerInfo(key, parent, size, last_used)


CHAIN = [
    info("base", None, 100, 50),
    info("a", "base", 10, 10),  # the least recently used leaf
    info("b", "base", 10, 40),
    info("b2", "b", 10, 30),
]


def test_eviction_takes_least_recently_used_leaves_first() -> None:
    assert evictions(CHAIN, 5, keep=lambda k: False) == ["a"]
    assert evictions(CHAIN, 20, keep=lambda k: False) == ["a", "b2"]
    assert evictions(CHAIN, 25, keep=lambda k: False) == ["a", "b2", "b"]
    assert evictions(CHAIN, 1000, keep=lambda k: False) == ["a", "b2", "b", "base"]


def test_eviction_spares_kept_layers_and_their_ancestors() -> None:
    assert evictions(CHAIN, 1000, keep=lambda k: k == "b2") == ["a"]


def test_prune_removes_what_was_unused_since_the_cutoff() -> None:
    assert unused_since(CHAIN, 35, keep=lambda k: False) == ["a", "b2"]
    assert unused_since(CHAIN, 45, keep=lambda k: False) == ["a", "b2", "b"]
    assert unused_since(CHAIN, 100, keep=lambda k: False) == ["a", "b2", "b", "base"]


def commit(store: LayerStore, key: str, parent: str | None, size: int, used: float) -> None:
    with store.staging(key) as staging:
        (staging / "fs" / "data").write_bytes(b"\0" * size)
        store.commit(staging, key, parent, f"RUN make {key}", ImageConfig())
    os.utime(store.root / key / "layer.json", (used, used))


def test_size_cap_evicts_old_unused_layers_only(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    now = time.time()
    commit(store, "base", None, 64_000, now - 3600)
    commit(store, "old", "base", 64_000, now - 3600)
    commit(store, "used", "base", 64_000, now - 3600)
    commit(store, "fresh", "base", 64_000, now)
    leases = Leases()
    held = leases.acquire([store.root / "used" / "fs"])  # a running container's layer
    try:
        collector = Collector(store, max_bytes=100_000, clock=lambda: now)
        assert collector.enforce_cap() == ["old"]
    finally:
        leases.release(held)
    assert {layer.key for layer in store.all()} == {"base", "used", "fresh"}
