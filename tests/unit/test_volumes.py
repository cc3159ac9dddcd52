"""Volumes' files on tmp_path: path rules, block math, a tree walked without links (as hostile
containers leave it), assembly from blocks, lifetimes, and the URLs that move blocks."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from kiln.auth import SignedUrls
from kiln.containers.namespaces import _open_without_links
from kiln.errors import InvalidRequest, NotFound
from kiln.storage.state import StateStore
from kiln.storage.volume_tree import (
    BLOCK_SIZE,
    FileExists,
    FileType,
    VolumeTree,
    block_count,
    block_ranges,
    split_path,
)
from kiln.storage.volumes import BLOCK_RETENTION, EMPTY_BLOCK, FileUpload, Volumes

MiB = 2**20


# -- pure ------------------------------------------------------------------------------------------


def test_paths_are_split_relative_to_the_root_and_never_climb() -> None:
    assert split_path("/a/b.txt") == split_path("a//b.txt/") == split_path("./a/./b.txt") == ("a", "b.txt")
    assert split_path("/") == split_path("") == ()
    for bad in ("../etc/passwd", "a/../../b", "a/..", "a\0b", "x" * 5000, "d/" + "n" * 256):
        with pytest.raises(InvalidRequest):
            split_path(bad)


def test_names_that_are_not_utf8_are_listed_with_replacement_characters(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "staging").mkdir()
    open(os.fsencode(root) + b"/caf\xe9", "w").close()
    [entry] = VolumeTree(root, tmp_path / "staging").entries((), recursive=False)
    assert entry.path == "caf\ufffd" and entry.path.encode()


def test_blocks_cover_a_range_cut_at_8_mib_boundaries() -> None:
    assert block_count(0) == 0 and block_count(1) == 1 and block_count(BLOCK_SIZE) == 1
    assert block_count(BLOCK_SIZE + 1) == 2
    assert block_ranges(0, 0) == []
    assert block_ranges(0, 10) == [(0, 10)]
    assert block_ranges(BLOCK_SIZE - 5, 10) == [(BLOCK_SIZE - 5, 5), (BLOCK_SIZE, 5)]
    assert block_ranges(3, 2 * BLOCK_SIZE) == [
        (3, BLOCK_SIZE - 3), (BLOCK_SIZE, BLOCK_SIZE), (2 * BLOCK_SIZE, 3),
    ]  # fmt: skip


def test_an_upload_must_announce_one_digest_per_block() -> None:
    with pytest.raises(InvalidRequest, match="2 blocks"):
        FileUpload.of("/f", BLOCK_SIZE + 1, 0o644, [EMPTY_BLOCK])
    with pytest.raises(InvalidRequest, match="root"):
        FileUpload.of("/", 0, 0o644, [])
    assert FileUpload.of("f", 0, 0, []).mode == 0o644


# -- the tree --------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> VolumeTree:
    (tmp_path / "root").mkdir()
    (tmp_path / "staging").mkdir()
    return VolumeTree(tmp_path / "root", tmp_path / "staging")


def _write(tree: VolumeTree, path: str, data: bytes, overwrite: bool = True) -> None:
    source = tree.staging.parent / "source"
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    try:
        tree.write_file(split_path(path), len(data), 0o640, [(fd, 0, 0, len(data))], overwrite)
    finally:
        os.close(fd)


def test_files_are_written_whole_with_their_parents_and_listed(tree: VolumeTree) -> None:
    _write(tree, "a/b/c.txt", b"hello")
    assert (tree.root / "a/b/c.txt").read_bytes() == b"hello"
    assert (tree.root / "a/b/c.txt").stat().st_mode & 0o777 == 0o640
    assert list(tree.staging.iterdir()) == []  # nothing half-written left behind
    entries = list(tree.entries((), recursive=True))
    assert [(e.path, e.type, e.size) for e in entries] == [
        ("a", FileType.DIRECTORY, 0), ("a/b", FileType.DIRECTORY, 0), ("a/b/c.txt", FileType.FILE, 5),
    ]  # fmt: skip
    assert [e.path for e in tree.entries(("a", "b", "c.txt"), recursive=False)] == ["a/b/c.txt"]


def test_a_file_that_may_not_be_overwritten_stays(tree: VolumeTree) -> None:
    _write(tree, "f", b"first")
    with pytest.raises(FileExists, match="force=True"):
        _write(tree, "f", b"second", overwrite=False)
    with pytest.raises(FileExists, match="force=True"):
        tree.check_absent(("f",))
    _write(tree, "f", b"last writer wins")
    assert (tree.root / "f").read_bytes() == b"last writer wins"
    (tree.root / "d").mkdir()
    with pytest.raises(FileExists, match="directory"):
        _write(tree, "d", b"x")


def test_links_are_listed_never_followed_when_reading_writing_or_removing(
    tree: VolumeTree, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (tree.root / "file-link").symlink_to(secret)
    (tree.root / "dir-link").symlink_to(outside)
    (tree.root / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(tree.root / "fifo")
    kinds = {e.path: e.type for e in tree.entries((), recursive=True)}
    assert kinds == {"dir-link": FileType.SYMLINK, "file-link": FileType.SYMLINK, "fifo": FileType.OTHER}
    with pytest.raises(InvalidRequest, match="symbolic link"):
        tree.open_file(("file-link",))
    with pytest.raises(InvalidRequest, match="regular file"):
        tree.open_file(("fifo",))  # opened non-blocking, never read
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree.root / "sock"))
        with pytest.raises(InvalidRequest, match="regular file"):
            tree.open_file(("sock",))
    os.unlink(tree.root / "sock")
    with pytest.raises(InvalidRequest, match="not a directory"):
        _write(tree, "dir-link/planted", b"x")
    with pytest.raises(InvalidRequest, match="not a directory"):
        list(tree.entries(("dir-link", "x"), recursive=True))
    tree.copy([("file-link",)], ("copied-link",), recursive=False)
    assert os.readlink(tree.root / "copied-link") == str(secret)  # a link is copied as a link
    tree.remove(("dir-link",), recursive=True)
    tree.remove((), recursive=True)
    assert list(outside.parent.iterdir()) and secret.read_text() == "host only"
    assert not (outside / "planted").exists() and list(tree.root.iterdir()) == []


def test_copies_follow_cp(tree: VolumeTree) -> None:
    _write(tree, "d/a.txt", b"a")
    _write(tree, "b.txt", b"b")
    tree.copy([("b.txt",)], ("c.txt",), recursive=False)
    tree.copy([("b.txt",), ("d", "a.txt")], ("into",), recursive=False)
    tree.copy([("d",)], ("e",), recursive=True)
    tree.copy([("b.txt",)], ("e",), recursive=False)
    names = sorted(e.path for e in tree.entries((), recursive=True) if e.type == FileType.FILE)
    assert names == ["b.txt", "c.txt", "d/a.txt", "e/a.txt", "e/b.txt", "into/a.txt", "into/b.txt"]
    with pytest.raises(InvalidRequest, match="recursive=True"):
        tree.copy([("d",)], ("f",), recursive=False)
    with pytest.raises(InvalidRequest, match="into itself"):
        tree.copy([("d",)], ("d", "sub"), recursive=True)
    with pytest.raises(NotFound):
        tree.copy([("missing",)], ("x",), recursive=False)


def test_removing_needs_recursive_for_directories(tree: VolumeTree) -> None:
    _write(tree, "d/a.txt", b"a")
    with pytest.raises(InvalidRequest, match="recursive=True"):
        tree.remove(("d",), recursive=False)
    with pytest.raises(NotFound):
        tree.remove(("nope",), recursive=False)
    tree.remove(("d",), recursive=True)
    assert list(tree.root.iterdir()) == []


# -- the room --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def volumes(tmp_path: Path) -> Volumes:
    return Volumes(
        StateStore(tmp_path / "state.sqlite3"), tmp_path / "volumes", tmp_path / "blocks", clock=Clock()
    )


def _block(volumes: Volumes, volume_id: str, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    fd, received = volumes.staging_file(volume_id)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    volumes.commit_block(volume_id, received, digest)
    return digest


def test_a_file_is_assembled_from_its_blocks_with_zeros_where_the_client_left_them_out(
    volumes: Volumes,
) -> None:
    vo, _ = volumes.create("v", "main")
    vid = vo.object_id
    first, last = os.urandom(BLOCK_SIZE), b"tail\0\0"  # the client strips trailing zeros
    size = 3 * BLOCK_SIZE + len(last)
    digests = [
        hashlib.sha256(first).digest(),
        EMPTY_BLOCK,
        hashlib.sha256(b"end").digest(),
        hashlib.sha256(b"tail").digest(),
    ]
    assert volumes.missing_blocks(vid, digests) == {digests[0], digests[2], digests[3]}
    _block(volumes, vid, first)
    _block(volumes, vid, b"end")
    _block(volumes, vid, b"tail")
    assert volumes.missing_blocks(vid, digests) == set()
    volumes.put_files(vid, [FileUpload.of("/big", size, 0o644, digests)], overwrite=True)
    data = (volumes.root / vid / "big").read_bytes()
    assert data == first + b"\0" * BLOCK_SIZE + b"end".ljust(BLOCK_SIZE, b"\0") + last
    with pytest.raises(InvalidRequest, match="more than"):
        volumes.put_files(vid, [FileUpload.of("/small", 2, 0o644, [digests[0]])], overwrite=True)


def test_blocks_are_kept_while_used_then_swept(volumes: Volumes) -> None:
    vid = volumes.create("v", "main")[0].object_id
    clock = volumes._clock
    assert isinstance(clock, Clock)
    digest = _block(volumes, vid, b"data")
    os.utime(volumes.block_path(vid, digest), (clock.now, clock.now))
    clock.now += BLOCK_RETENTION - 1
    assert volumes.missing_blocks(vid, [digest]) == set()  # and used again: kept longer
    clock.now += BLOCK_RETENTION - 1
    assert volumes.sweep_blocks() == 0
    clock.now += 2
    assert volumes.sweep_blocks() == 1
    assert volumes.missing_blocks(vid, [digest]) == {digest}


def test_deleting_a_volume_frees_its_files_and_orphans_are_removed_at_start(volumes: Volumes) -> None:
    vid = volumes.create("v", "main")[0].object_id
    _block(volumes, vid, b"data")
    (volumes.tree(vid).root / "f").write_text("x")
    volumes.delete(vid)
    assert list(volumes.root.iterdir()) == []  # moved aside at once, removed in the background
    trash = volumes.blocks_root / "trash"
    deadline = time.monotonic() + 10
    while list(trash.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(volumes.blocks_root.iterdir()) == [trash] and list(trash.iterdir()) == []
    with pytest.raises(NotFound):
        volumes.tree(vid)
    (volumes.root / "vo-gone").mkdir()
    assert volumes.remove_orphans() == ["vo-gone"]


def test_renaming_keeps_the_files_and_refuses_a_taken_name(volumes: Volumes) -> None:
    vid = volumes.create("old", "main")[0].object_id
    volumes.create("taken", "main")
    with pytest.raises(FileExistsError):
        volumes.rename(vid, "taken")
    volumes.rename(vid, "new")
    found = volumes.lookup("new", "main")
    assert found is not None and found.object_id == vid and volumes.lookup("old", "main") is None


def test_a_sub_path_mount_is_made_through_real_directories_only(volumes: Volumes, tmp_path: Path) -> None:
    vid = volumes.create("v", "main")[0].object_id
    assert volumes.mount_source(vid, "/a/b") == volumes.root / vid / "a" / "b"
    assert (volumes.root / vid / "a" / "b").is_dir()
    (volumes.root / vid / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidRequest, match="not a directory"):
        volumes.mount_source(vid, "link/x")


# -- binds and URLs --------------------------------------------------------------------------------


def test_the_sandbox_helper_binds_a_directory_reached_without_links(tmp_path: Path) -> None:
    (tmp_path / "real" / "dir").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    fd = _open_without_links(str(tmp_path / "real" / "dir"))
    assert os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path / "real" / "dir")
    os.close(fd)
    with pytest.raises(OSError, match="symbolic link"):
        _open_without_links(str(tmp_path / "linked" / "dir"))


def test_signed_requests_cover_route_and_every_parameter() -> None:
    now = [100.0]
    urls = SignedUrls(b"k" * 32, "http://127.0.0.1:1", ttl=60, clock=lambda: now[0])
    url = urls.request("/volumes/vo-x/read", {"path": "61", "start": "0", "len": "5"})
    query = [(k, v) for k, v in (p.split("=", 1) for p in url.split("?", 1)[1].split("&"))]
    assert urls.check_request("/volumes/vo-x/read", query)["len"] == "5"
    for route, changed in [
        ("/volumes/vo-y/read", query),
        ("/volumes/vo-x/read", [(k, "6" if k == "len" else v) for k, v in query]),
        ("/volumes/vo-x/read", [*query, ("start", "1")]),
        ("/volumes/vo-x/read", [(k, v) for k, v in query if k != "path"]),
    ]:
        with pytest.raises(InvalidRequest, match="not one kiln signed"):
            urls.check_request(route, changed)
    now[0] += 61
    with pytest.raises(InvalidRequest, match="expired"):
        urls.check_request("/volumes/vo-x/read", query)
