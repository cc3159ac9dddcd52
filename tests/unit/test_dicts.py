"""The dicts room on a state store in tmp_path: lifetimes, names, pagination and contents."""

from pathlib import Path

import pytest

from kiln.errors import InvalidRequest, NotFound
from kiln.storage.dicts import Dicts
from kiln.storage.named import IfExists, Lifetime
from kiln.storage.state import StateStore
from kiln.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def dicts(tmp_path: Path, clock: FakeClock) -> Dicts:
    return Dicts(StateStore(tmp_path / "state.sqlite3"), clock=clock, ephemeral_grace=900)


def test_a_name_is_created_once_and_found_in_its_environment_only(dicts: Dicts) -> None:
    made, created = dicts.create("cache", "main")
    again, created_again = dicts.create("cache", "main")
    assert created and not created_again
    assert again == made and made.lifetime is Lifetime.NAMED
    assert dicts.lookup("cache", "main") == made
    assert dicts.lookup("cache", "dev") is None
    other, created = dicts.create("cache", "dev")
    assert created and other.object_id != made.object_id


def test_replacing_a_name_starts_an_empty_dict(dicts: Dicts) -> None:
    old, _ = dicts.create("cache", "main")
    dicts.put(old.object_id, [(b"k", b"v")])
    new, created = dicts.create("cache", "main", IfExists.REPLACE)
    assert created and new.object_id != old.object_id
    assert dicts.len(new.object_id) == 0
    with pytest.raises(NotFound):
        dicts.len(old.object_id)


def test_put_get_pop_contains_len_clear(dicts: Dicts) -> None:
    d, _ = dicts.create("d", "main")
    assert dicts.put(d.object_id, [(b"a", b"1"), (b"b", b"2")])
    assert dicts.get(d.object_id, b"a") == b"1"
    assert dicts.get(d.object_id, b"zz") is None
    assert dicts.contains(d.object_id, b"b") and not dicts.contains(d.object_id, b"c")
    assert dicts.len(d.object_id) == 2
    assert dicts.pop(d.object_id, b"a") == b"1"
    assert dicts.pop(d.object_id, b"a") is None
    dicts.clear(d.object_id)
    assert dicts.len(d.object_id) == 0


def test_keys_compare_byte_wise(dicts: Dicts) -> None:
    d, _ = dicts.create("d", "main")
    dicts.put(d.object_id, [(b"\x00k", b"1"), (b"k", b"2"), (b"K", b"3")])
    assert [dicts.get(d.object_id, k) for k in (b"\x00k", b"k", b"K")] == [b"1", b"2", b"3"]


def test_put_if_not_exists_keeps_the_first_value(dicts: Dicts) -> None:
    d, _ = dicts.create("d", "main")
    assert dicts.put(d.object_id, [(b"k", b"first")], if_not_exists=True) is True
    assert dicts.put(d.object_id, [(b"k", b"second")], if_not_exists=True) is False
    assert dicts.get(d.object_id, b"k") == b"first"
    assert dicts.put(d.object_id, [(b"k", b"third")]) is True
    assert dicts.get(d.object_id, b"k") == b"third"


def test_contents_keep_the_order_keys_were_first_put(dicts: Dicts) -> None:
    d, _ = dicts.create("d", "main")
    entries = [(str(i).encode(), str(i * i).encode()) for i in range(2500)]  # more than one batch
    dicts.put(d.object_id, entries)
    dicts.put(d.object_id, [(b"0", b"new")])  # an update keeps its place
    got = list(dicts.contents(d.object_id))
    assert got[0] == (b"0", b"new") and got[1:] == entries[1:]


def test_an_entry_over_the_limit_is_refused_with_the_fix(tmp_path: Path) -> None:
    dicts = Dicts(StateStore(tmp_path / "s.sqlite3"), max_entry_bytes=10)
    d, _ = dicts.create("d", "main")
    with pytest.raises(InvalidRequest, match="KILN_DICT_MAX_ENTRY_BYTES"):
        dicts.put(d.object_id, [(b"k", b"x" * 10)])
    assert dicts.len(d.object_id) == 0


def test_a_deleted_dict_is_gone_with_its_entries(dicts: Dicts) -> None:
    d, _ = dicts.create("d", "main")
    dicts.put(d.object_id, [(b"k", b"v")])
    dicts.delete(d.object_id)
    assert dicts.lookup("d", "main") is None
    for operation in (lambda: dicts.get(d.object_id, b"k"), lambda: dicts.len(d.object_id)):
        with pytest.raises(NotFound, match=d.object_id):
            operation()
    with pytest.raises(NotFound):
        dicts.delete(d.object_id)
    assert dicts.state.query("SELECT COUNT(*) FROM dict_entries") == [(0,)]


def test_an_ephemeral_dict_lives_while_it_heartbeats(dicts: Dicts, clock: FakeClock) -> None:
    d = dicts.create_ephemeral("main")
    assert d.name == "" and d.lifetime is Lifetime.EPHEMERAL
    clock.advance(800)
    dicts.heartbeat(d.object_id)
    clock.advance(800)
    assert dicts.expire() == []
    clock.advance(200)
    assert dicts.expire() == [d.object_id]
    with pytest.raises(NotFound):
        dicts.heartbeat(d.object_id)


def test_a_dict_owned_by_an_app_goes_when_the_app_stops(dicts: Dicts) -> None:
    mine = dicts.create_for_app("main", "ap-1")
    other = dicts.create_for_app("main", "ap-2")
    named, _ = dicts.create("kept", "main")
    assert dicts.forget_app("ap-1") == [mine.object_id]
    assert dicts.find(mine.object_id) is None
    assert dicts.find(other.object_id) is not None and dicts.find(named.object_id) is not None


def test_listing_is_newest_first_in_pages_strictly_older_than_the_cursor(
    dicts: Dicts, clock: FakeClock
) -> None:
    for i in range(5):
        dicts.create(f"d{i}", "main")
        clock.advance(1)
    dicts.create_ephemeral("main")  # anonymous: never listed
    dicts.create("elsewhere", "dev")
    first = dicts.page("main", limit=2)
    assert [o.name for o in first] == ["d4", "d3"]
    second = dicts.page("main", limit=2, created_before=first[-1].created_at)
    assert [o.name for o in second] == ["d2", "d1"]
    rest = dicts.page("main", limit=2, created_before=second[-1].created_at)
    assert [o.name for o in rest] == ["d0"]
    assert len(dicts.page("main")) == 5


def test_entries_survive_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    dicts = Dicts(StateStore(path))
    d, _ = dicts.create("d", "main")
    dicts.put(d.object_id, [(b"k", b"v")])
    dicts.state.close()
    reopened = Dicts(StateStore(path))
    assert reopened.lookup("d", "main") == d
    assert reopened.get(d.object_id, b"k") == b"v"
