"""modal.Volume through the official client: the Python API, mounts in functions (two containers,
read-only, sub_path), the CLI, links planted by a container, and durability across `kill -9`."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import uuid
from pathlib import Path
from types import ModuleType

import modal
import modal.exception
import pytest
from modal.types import FileEntryType

from tests.conftest import (
    KilnServer,
    RestartableServer,
    check_ephemeral_lifetime,
    gone_after_heartbeats,
    run_client,
    run_modal,
    survives_kill_9,
)

pytestmark = pytest.mark.e2e

MiB = 2**20


def _name() -> str:
    return f"v-{uuid.uuid4().hex[:10]}"


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _read(volume: modal.Volume, path: str) -> bytes:
    return b"".join(volume.read_file(path))


@pytest.fixture
def volumes_app(modal_client: None) -> ModuleType:
    """The app of tests/apps/volumes_app.py, on a volume of this session's own (imported once)."""
    os.environ.setdefault("KILN_TEST_VOLUME", _name())
    return importlib.import_module("volumes_app")


@pytest.mark.timeout(60)
def test_files_go_up_in_batches_and_come_back(modal_client: None, tmp_path: Path) -> None:
    volume = modal.Volume.from_name(_name(), create_if_missing=True)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("alpha")
    (tmp_path / "tree" / "sub" / "b.txt").write_text("beta")
    (tmp_path / "local.bin").write_bytes(b"\0" * 100 + b"x")
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"from memory"), "/mem.txt")
        batch.put_file(tmp_path / "local.bin", "/deep/er/local.bin")
        batch.put_directory(tmp_path / "tree", "/tree")
    assert _read(volume, "mem.txt") == b"from memory"
    assert _read(volume, "/deep/er/local.bin") == b"\0" * 100 + b"x"
    assert sorted(e.path for e in volume.listdir("/")) == ["deep", "mem.txt", "tree"]
    assert sorted(e.path for e in volume.listdir("tree", recursive=True)) == [
        "tree/a.txt", "tree/sub", "tree/sub/b.txt",
    ]  # fmt: skip
    kinds = {e.path: e.type for e in volume.iterdir("/tree")}
    assert kinds["tree/sub"] == FileEntryType.DIRECTORY
    assert [e.size for e in volume.listdir("mem.txt")] == [len(b"from memory")]

    with pytest.raises(FileExistsError, match="force=True"), volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"again"), "/mem.txt")
    with volume.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"replaced"), "/mem.txt")
    assert _read(volume, "mem.txt") == b"replaced"

    volume.copy_files(["mem.txt"], "copy.txt")
    volume.copy_files(["mem.txt", "tree/a.txt"], "into")
    volume.copy_files(["tree"], "tree2", recursive=True)
    assert _read(volume, "copy.txt") == b"replaced"
    assert sorted(e.path for e in volume.listdir("into")) == ["into/a.txt", "into/mem.txt"]
    assert _read(volume, "tree2/sub/b.txt") == b"beta"
    with pytest.raises(modal.exception.InvalidError, match="recursive=True"):
        volume.copy_files(["tree"], "tree3")

    volume.remove_file("copy.txt")
    with pytest.raises(FileNotFoundError):
        volume.remove_file("copy.txt")
    with pytest.raises(modal.exception.InvalidError, match="recursive=True"):
        volume.remove_file("tree")
    volume.remove_file("tree", recursive=True)
    with pytest.raises(FileNotFoundError):
        _read(volume, "tree/a.txt")
    with pytest.raises(modal.exception.InvalidError, match=r"'\.\.'"):
        _read(volume, "../../etc/passwd")
    assert volume.info().name == volume.name


@pytest.mark.timeout(60)
def test_names_rename_list_and_delete(modal_client: None) -> None:
    name, other = _name(), _name()
    with pytest.raises(modal.exception.NotFoundError, match="create_if_missing=True"):
        modal.Volume.from_name(name).listdir("/")
    modal.Volume.objects.create(name)
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Volume.objects.create(name)
    volume = modal.Volume.from_name(name)
    with volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"kept"), "f")
    modal.Volume.objects.create(other)
    with pytest.raises(modal.exception.AlreadyExistsError, match="already exists"):
        modal.Volume.rename(name, other)
    renamed = _name()
    modal.Volume.rename(name, renamed)
    assert _read(modal.Volume.from_name(renamed), "f") == b"kept"
    listed = [v.name for v in modal.Volume.objects.list(max_objects=3)]
    assert listed[:2] == [other, renamed]  # newest first, by creation
    volume_id = modal.Volume.from_name(renamed).hydrate().object_id
    modal.Volume.objects.delete(renamed)
    with pytest.raises(modal.exception.NotFoundError):
        modal.Volume.from_id(volume_id).listdir("/")
    modal.Volume.objects.delete(other)


@pytest.mark.timeout(60)
def test_version_1_and_network_file_systems_are_refused_with_the_fix(modal_client: None) -> None:
    with pytest.raises(modal.exception.InvalidError, match="version 2 only"):
        modal.Volume.from_name(_name(), create_if_missing=True, version=1).hydrate()
    assert modal.Volume.from_name(_name(), create_if_missing=True, version=2).listdir("/") == []
    with (
        pytest.warns(modal.exception.DeprecationError),  # the client's own
        pytest.raises(modal.exception.UnimplementedError, match=r"use modal\.Volume"),
    ):
        modal.NetworkFileSystem.from_name(_name(), create_if_missing=True).hydrate()


CLOUD_BUCKET_APP = """
import modal
app = modal.App("kiln-test-bucket")
@app.function(volumes={"/bucket": modal.CloudBucketMount("my-bucket")})
def f():
    pass
with app.run():
    pass
"""


@pytest.mark.timeout(120)
def test_a_cloud_bucket_mount_is_refused_at_creation_naming_what_kiln_lacks(kiln: KilnServer) -> None:
    result = run_client(kiln, CLOUD_BUCKET_APP)
    assert result.returncode != 0
    assert "CloudBucketMount of 'my-bucket'" in _output(result) and "modal.Volume" in _output(result)


@pytest.mark.timeout(300)
def test_functions_and_classes_share_a_volume_and_mount_options_hold(volumes_app: ModuleType) -> None:
    app = volumes_app.app
    volume_id = volumes_app.volume.hydrate().object_id
    directory = uuid.uuid4().hex[:8]
    with app.run():
        assert volumes_app.read.remote(volume_id, f"{directory}/note.txt") is None
        volumes_app.write.remote(volume_id, f"{directory}/note.txt", "written in one container")
        assert volumes_app.read.remote(volume_id, f"{directory}/note.txt") == "written in one container"
        assert volumes_app.Reader().read.remote(f"{directory}/note.txt") == "written in one container"
        assert volumes_app.write_read_only.remote(f"{directory}/ro.txt") == "refused: Read-only file system"
        assert volumes_app.use_sub_path.remote("s.txt", "in a sub path") == ["s.txt"]
        refused = volumes_app.reload_with_an_open_file.remote(volume_id, f"{directory}/note.txt")
        assert "open files preventing the operation" in refused and "note.txt" in refused
    # What containers wrote is in the volume for the client too, owned so that containers can change it.
    assert _read(volumes_app.volume, f"{directory}/note.txt") == b"written in one container"
    assert _read(volumes_app.volume, "kiln-sub/inner/s.txt") == b"in a sub path"
    with pytest.raises(FileNotFoundError):
        _read(volumes_app.volume, f"{directory}/ro.txt")


@pytest.mark.timeout(300)
def test_links_a_container_plants_are_never_followed(
    kiln: KilnServer, volumes_app: ModuleType, tmp_path: Path
) -> None:
    volume = volumes_app.volume
    directory = uuid.uuid4().hex[:8]
    with volumes_app.app.run():
        planted = volumes_app.plant_links.remote(directory)
    assert planted == ["dir-link", "file-link", "root-link"]
    kinds = {e.path: e.type for e in volume.listdir(directory)}
    assert set(kinds.values()) == {FileEntryType.SYMLINK}
    with pytest.raises(modal.exception.InvalidError, match="symbolic link"):
        _read(volume, f"{directory}/file-link")
    with pytest.raises(modal.exception.InvalidError, match="not a directory"):
        _read(volume, f"{directory}/dir-link/passwd")
    with pytest.raises(modal.exception.InvalidError, match="not a directory"):
        volume.listdir(f"{directory}/root-link/etc")
    marker = f"kiln-escape-{uuid.uuid4().hex[:8]}"
    with pytest.raises(modal.exception.InvalidError), volume.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"escaped"), f"{directory}/dir-link/{marker}")
    assert not Path("/etc", marker).exists()
    got = run_modal(kiln, "volume", "get", volume.name, f"{directory}/", str(tmp_path / "out"))
    assert not (tmp_path / "out" / directory / "file-link").exists()
    assert "root:" not in got.stdout
    # A sub_path a container turned into a link is not mounted (the container never starts).
    with volumes_app.app.run():
        volumes_app.link_sub_path.remote()
        with pytest.raises(
            modal.exception.RemoteError, match="'kiln-linked' in this volume is not a directory"
        ):
            volumes_app.use_linked_sub_path.remote()
    # Removing a link removes the link, not what it points to.
    volume.remove_file(f"{directory}/dir-link")
    assert Path("/etc/hostname").exists()
    volume.remove_file(directory, recursive=True)
    assert Path("/etc/passwd").exists()


@pytest.mark.timeout(300)
def test_the_volume_cli_with_a_multi_block_file(kiln: KilnServer, tmp_path: Path) -> None:
    name = _name()
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # 40 MB: random blocks, an all-zero block, a ragged end
        f.write(os.urandom(17 * MiB) + b"\0" * (9 * MiB) + os.urandom(14 * MiB + 12345))
    assert run_modal(kiln, "volume", "create", name).returncode == 0
    listed = run_modal(kiln, "volume", "list", "--json")
    assert listed.returncode == 0 and name in [row["name"] for row in json.loads(listed.stdout)], _output(
        listed
    )
    put = run_modal(kiln, "volume", "put", name, str(big), "/data/")
    assert put.returncode == 0, _output(put)
    again = run_modal(kiln, "volume", "put", name, str(big), "/data/")
    assert again.returncode != 0 and "already exists" in _output(again)
    assert run_modal(kiln, "volume", "put", "-f", name, str(big), "/data/").returncode == 0
    ls = run_modal(kiln, "volume", "ls", name, "/data", "--json")
    [row] = json.loads(ls.stdout)
    assert (row["filename"], row["type"], row["size"]) == ("data/big.bin", "file", big.stat().st_size), (
        _output(ls)
    )
    got = run_modal(kiln, "volume", "get", name, "/data/big.bin", str(tmp_path / "back.bin"))
    assert got.returncode == 0, _output(got)
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert run_modal(kiln, "volume", "cp", name, "data/big.bin", "copy.bin").returncode == 0
    (tmp_path / "all").mkdir()
    whole = run_modal(kiln, "volume", "get", name, "/", str(tmp_path / "all"))
    assert whole.returncode == 0, _output(whole)
    assert (tmp_path / "all" / "copy.bin").read_bytes() == big.read_bytes()
    assert (tmp_path / "all" / "data" / "big.bin").stat().st_size == big.stat().st_size
    removed = run_modal(kiln, "volume", "rm", name, "data", "-r")
    assert removed.returncode == 0, _output(removed)
    listing = json.loads(run_modal(kiln, "volume", "ls", name, "--json").stdout)
    assert [row["filename"] for row in listing] == ["copy.bin"]
    renamed = _name()
    assert run_modal(kiln, "volume", "rename", name, renamed, "--yes").returncode == 0
    found = run_client(
        kiln, "import modal, sys; print(modal.Volume.from_name(sys.argv[1]).hydrate().object_id)", renamed
    )
    tree = kiln.home / "volumes" / found.stdout.strip()
    assert (tree / "copy.bin").exists(), _output(found)
    deleted = run_modal(kiln, "volume", "delete", renamed, "--yes")
    assert deleted.returncode == 0, _output(deleted)
    assert not tree.exists()  # the space is freed
    missing = run_modal(kiln, "volume", "ls", renamed)
    assert missing.returncode != 0 and f"modal volume create {renamed}" in _output(missing)


EPHEMERAL = """
import io, time
import modal, modal.exception

with modal.Volume.ephemeral(_heartbeat_sleep=0.5) as v:
    with v.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"short-lived"), "/f")
    time.sleep(6)  # past the server's grace: the heartbeats keep it
    assert b"".join(v.read_file("f")) == b"short-lived"
    volume_id = v.object_id
print("kept alive")
""" + gone_after_heartbeats('modal.Volume.from_id(volume_id).listdir("/")')


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_ephemeral_volume_lives_while_its_client_heartbeats(restartable_server: RestartableServer) -> None:
    check_ephemeral_lifetime(restartable_server, EPHEMERAL)
    assert list((restartable_server.home / "volumes").iterdir()) == []  # its files went with it


WRITE = """
import io, sys
import modal
v = modal.Volume.from_name(sys.argv[1], create_if_missing=True)
with v.batch_upload() as batch:
    batch.put_file(io.BytesIO(b"x" * 20_000_000), "/big")
    batch.put_file(io.BytesIO(b"small"), "/dir/small")
print("written")
"""

READ = """
import sys
import modal
v = modal.Volume.from_name(sys.argv[1])
big = b"".join(v.read_file("big"))
print("big", len(big), set(big), "small", b"".join(v.read_file("dir/small")).decode())
"""


@pytest.mark.timeout(120)
def test_acknowledged_files_survive_kill_9(restartable_server: RestartableServer) -> None:
    read = survives_kill_9(restartable_server, WRITE, READ, _name())
    assert "big 20000000 {120} small small" in read
