"""Blob store and state store, on tmp_path."""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.errors import InvalidRequest, KilnError
from kiln.storage.blobs import BlobStore
from kiln.storage.state import StateStore

# -- BlobStore ------------------------------------------------------------------------------------


def test_put_file_is_content_addressed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"hello world"
    digest = store.put_file(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.has_file(digest)
    assert store.file_path(digest).read_bytes() == data
    assert store.put_file(data, expected_sha256=digest) == digest  # idempotent


def test_unknown_file_is_absent(tmp_path: Path) -> None:
    assert not BlobStore(tmp_path).has_file("0" * 64)


def test_put_file_with_wrong_sha_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"content"
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(InvalidRequest, match=wrong):
        store.put_file(data, expected_sha256=wrong)
    assert not store.has_file(hashlib.sha256(data).hexdigest())
    assert not store.has_file(wrong)


def test_blob_roundtrip_and_md5_etag(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.new_blob_id()
    assert blob_id.startswith("bl-")
    assert store.write_blob(blob_id, b"payload") == hashlib.md5(b"payload").hexdigest()
    assert store.read_blob(blob_id) == b"payload"
    created = store.create_blob(b"other")
    assert created != blob_id
    assert store.read_blob(created) == b"other"


def test_blob_overwrite(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.new_blob_id()
    store.write_blob(blob_id, b"one")
    store.write_blob(blob_id, b"two")
    assert store.read_blob(blob_id) == b"two"


def test_missing_blob_is_an_invalid_request(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(InvalidRequest, match="never uploaded"):
        store.read_blob(store.new_blob_id())


@pytest.mark.parametrize("bad", ["xx-123", "bl-../../etc/passwd", "../bl-x", ""])
def test_bad_blob_ids_are_refused(tmp_path: Path, bad: str) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(InvalidRequest):
        store.read_blob(bad)
    with pytest.raises(InvalidRequest):
        store.write_blob(bad, b"x")


def test_file_from_blob_checks_the_sha(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.create_blob(b"big file")
    digest = hashlib.sha256(b"big file").hexdigest()
    assert store.put_file_from_blob(blob_id, digest) == digest
    assert store.file_path(digest).read_bytes() == b"big file"
    with pytest.raises(InvalidRequest):
        store.put_file_from_blob(blob_id, "0" * 64)


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.put_file(b"a")
    store.create_blob(b"b")
    with pytest.raises(KilnError):
        store.put_file(b"c", expected_sha256="0" * 64)
    assert list((tmp_path / "tmp").iterdir()) == []


# -- StateStore -----------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(tmp_path / "state" / "kiln.db")
    yield store
    store.close()


def test_put_and_get(state: StateStore) -> None:
    state.put("images", "im-1", {"layers": ["a", "b"], "n": 1})
    assert state.get("images", "im-1") == {"layers": ["a", "b"], "n": 1}
    assert state.get("images", "im-2") is None
    assert state.get("mounts", "im-1") is None  # kinds are separate


def test_put_replaces_data(state: StateStore) -> None:
    state.put("secrets", "st-1", {"v": 1})
    state.put("secrets", "st-1", {"v": 2})
    assert state.get("secrets", "st-1") == {"v": 2}


def test_find_by_name_and_namespace(state: StateStore) -> None:
    state.put("secrets", "st-1", {"k": "dev"}, name="creds", namespace="dev")
    state.put("secrets", "st-2", {"k": "prod"}, name="creds", namespace="prod")
    assert state.find("secrets", "creds", "dev") == ("st-1", {"k": "dev"})
    assert state.find("secrets", "creds", "prod") == ("st-2", {"k": "prod"})
    assert state.find("secrets", "creds") is None
    assert state.find("secrets", "other", "dev") is None
    assert state.find("mounts", "creds", "dev") is None


def test_newer_object_with_the_same_name_wins(state: StateStore) -> None:
    state.put("mounts", "mo-1", {"v": 1}, name="m")
    state.put("mounts", "mo-2", {"v": 2}, name="m")
    assert state.find("mounts", "m") == ("mo-2", {"v": 2})


def test_reput_without_a_name_keeps_the_name(state: StateStore) -> None:
    state.put("mounts", "mo-1", {"v": 1}, name="m", namespace="ns")
    state.put("mounts", "mo-1", {"v": 2})
    assert state.find("mounts", "m", "ns") == ("mo-1", {"v": 2})


def test_reput_with_a_new_name_renames(state: StateStore) -> None:
    state.put("mounts", "mo-1", {"v": 1}, name="old", namespace="ns")
    state.put("mounts", "mo-1", {"v": 1}, name="new", namespace="other")
    assert state.find("mounts", "old", "ns") is None
    assert state.find("mounts", "new", "other") == ("mo-1", {"v": 1})


def test_name_given_back_to_an_earlier_object_finds_that_object(state: StateStore) -> None:
    # Content-addressed objects (mounts) keep their IDs: naming mo-1 again must point the name at it.
    state.put("mounts", "mo-1", {"v": 1}, name="m")
    state.put("mounts", "mo-2", {"v": 2}, name="m")
    state.put("mounts", "mo-1", {"v": 1}, name="m")
    assert state.find("mounts", "m") == ("mo-1", {"v": 1})


def test_a_deleted_object_is_gone_by_id_and_by_name(state: StateStore) -> None:
    state.put("secrets", "st-1", {}, name="creds")
    state.delete("secrets", "st-1")
    assert state.get("secrets", "st-1") is None
    assert state.find("secrets", "creds") is None
    state.delete("secrets", "st-1")  # deleting twice is harmless


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "kiln.db"
    first = StateStore(path)
    first.put("images", "im-1", {"x": 1}, name="img")
    first.close()
    second = StateStore(path)
    try:
        assert second.get("images", "im-1") == {"x": 1}
        assert second.find("images", "img") == ("im-1", {"x": 1})
    finally:
        second.close()


def test_anonymous_secrets_go_away_with_their_owner(tmp_path: Path) -> None:
    from kiln.storage.secrets import EPHEMERAL, Secrets

    secrets = Secrets(StateStore(tmp_path / "state.sqlite3"))
    named = secrets.create({"K": "named"}, "creds", "main", owner="ap-1")  # a name outlives any app
    mine = secrets.create({"K": "mine"}, owner="ap-1")
    other = secrets.create({"K": "other"}, owner="ap-2")
    loose = secrets.create({"K": "loose"}, owner=EPHEMERAL)
    assert secrets.remove_owned_by("ap-1") == 1
    assert secrets.get(mine.secret_id) is None
    assert secrets.get(other.secret_id) is not None and secrets.get(named.secret_id) is not None
    assert secrets.remove_owned_by(EPHEMERAL) == 1 and secrets.get(loose.secret_id) is None


def test_an_app_log_file_past_its_limit_keeps_its_newest_entries(tmp_path: Path) -> None:
    from kiln.storage.logs import LogFiles
    from kiln.streams import LogEntry

    logs = LogFiles(tmp_path / "logs", max_bytes=20_000)
    for n in range(1, 1001):
        logs.append("ap-1", LogEntry(n, f"line {n}\n", 1, float(n)))
    logs.close()
    path = tmp_path / "logs" / "ap-1.jsonl"
    assert path.stat().st_size <= 20_000
    entries = LogFiles(tmp_path / "logs").read("ap-1")
    assert entries[-1].entry_id == 1000
    ids = [e.entry_id for e in entries]
    assert ids == list(range(ids[0], 1001))  # contiguous: no entry cut in half survives
