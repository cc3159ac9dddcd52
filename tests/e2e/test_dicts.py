"""modal.Dict through the official client: the Python API, from inside a function, the CLI, and
durability across a `kill -9` of the server."""

from __future__ import annotations

import importlib
import json
import subprocess
import uuid

import modal
import modal.exception
import pytest

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


def _name() -> str:
    return f"d-{uuid.uuid4().hex[:10]}"


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_a_named_dict_behaves_like_a_dict(modal_client: None) -> None:
    d = modal.Dict.from_name(_name(), create_if_missing=True)
    d["a"] = 1
    d.put(("tuple", 2), {"nested": [1, 2]})
    d.update({"b": 2, "c": 3}, d=4)
    assert d["a"] == 1 and d.get(("tuple", 2)) == {"nested": [1, 2]}
    assert d.get("missing") is None and d.get("missing", "dflt") == "dflt"
    with pytest.raises(KeyError):
        d["missing"]
    assert "b" in d and "zz" not in d and d.contains("c")
    assert d.len() == 5
    assert list(d.keys()) == ["a", ("tuple", 2), "b", "c", "d"]
    assert list(d.values()) == [1, {"nested": [1, 2]}, 2, 3, 4]
    assert dict(d.items())["d"] == 4
    assert [k for k, _ in d.items() if isinstance(k, str)] == ["a", "b", "c", "d"]  # iteration
    assert d.pop("a") == 1 and "a" not in d
    assert d.pop("a", "gone") == "gone"
    assert d.put("b", "new", skip_if_exists=True) is False and d["b"] == 2
    assert d.put("e", 5, skip_if_exists=True) is True and d["e"] == 5
    d.clear()
    assert d.len() == 0 and list(d.items()) == []
    info = d.info()
    assert info.name == d.name and info.created_at is not None


EPHEMERAL = """
import sys, time
import modal, modal.exception

with modal.Dict.ephemeral(_heartbeat_sleep=0.5) as d:
    d["x"] = 1
    time.sleep(6)  # past the server's grace: the heartbeats keep it
    assert d["x"] == 1
    dict_id = d.object_id
print("kept alive")
""" + gone_after_heartbeats("modal.Dict.from_id(dict_id).len()")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_ephemeral_dict_lives_while_its_client_heartbeats(restartable_server: RestartableServer) -> None:
    check_ephemeral_lifetime(restartable_server, EPHEMERAL)


@pytest.mark.timeout(60)
def test_looking_up_a_missing_dict_names_the_fix(modal_client: None) -> None:
    name = _name()
    with pytest.raises(modal.exception.NotFoundError) as caught:
        modal.Dict.from_name(name).len()
    assert "create_if_missing=True" in str(caught.value) and f"modal dict create {name}" in str(caught.value)
    modal.Dict.objects.create(name)
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Dict.objects.create(name)
    modal.Dict.objects.create(name, allow_existing=True)
    assert modal.Dict.from_name(name).len() == 0


@pytest.mark.timeout(60)
def test_environments_scope_names_and_listing_pages(modal_client: None) -> None:
    name = _name()
    main = modal.Dict.from_name(name, create_if_missing=True)
    main["where"] = "main"
    assert modal.Dict.from_name(name, environment_name="main")["where"] == "main"  # "" is "main"
    dev = modal.Dict.from_name(name, environment_name="kiln-dev", create_if_missing=True)
    assert dev.len() == 0
    names = [f"{name}-{i}" for i in range(3)]
    for n in names:
        modal.Dict.objects.create(n, environment_name="kiln-dev")
    listed = [d.name for d in modal.Dict.objects.list(environment_name="kiln-dev", max_objects=2)]
    assert listed == names[::-1][:2]
    every = [d.name for d in modal.Dict.objects.list(environment_name="kiln-dev")]
    assert every[:4] == [*names[::-1], name]
    modal.Dict.objects.delete(name, environment_name="kiln-dev")
    assert main["where"] == "main"


@pytest.mark.timeout(300)
def test_a_function_reads_what_the_script_wrote_and_writes_back(modal_client: None) -> None:
    storage_app = importlib.import_module("storage_app")
    name = _name()
    d = modal.Dict.from_name(name, create_if_missing=True)
    d["from-local"] = "hello from the script"
    with storage_app.app.run():
        assert storage_app.answer_dict.remote(name) == "hello from the script"
    assert d["from-function"] == "the function saw hello from the script"


@pytest.mark.timeout(120)
def test_the_dict_cli(kiln: KilnServer) -> None:
    name = _name()
    assert run_modal(kiln, "dict", "create", name).returncode == 0
    filled = run_client(
        kiln,
        "import modal, sys; d = modal.Dict.from_name(sys.argv[1]); d['greeting'] = 'hello'; d['n'] = 7",
        name,
    )
    assert filled.returncode == 0, _output(filled)
    listed = run_modal(kiln, "dict", "list", "--json")
    assert listed.returncode == 0, _output(listed)
    assert name in [row["name"] for row in json.loads(listed.stdout)]
    got = run_modal(kiln, "dict", "get", name, "greeting")
    assert got.returncode == 0 and got.stdout.strip() == "hello", _output(got)
    items = run_modal(kiln, "dict", "items", name, "--json")
    assert items.returncode == 0, _output(items)
    assert json.loads(items.stdout) == [{"key": "greeting", "value": "hello"}, {"key": "n", "value": 7}]
    cleared = run_modal(kiln, "dict", "clear", name, "--yes")
    assert cleared.returncode == 0, _output(cleared)
    assert json.loads(run_modal(kiln, "dict", "items", name, "--json").stdout) == []
    deleted = run_modal(kiln, "dict", "delete", name, "--yes")
    assert deleted.returncode == 0, _output(deleted)
    missing = run_modal(kiln, "dict", "get", name, "greeting")
    assert missing.returncode != 0 and "not found" in _output(missing), _output(missing)
    assert run_modal(kiln, "dict", "delete", name, "--yes", "--allow-missing").returncode == 0


WRITE = """
import modal, sys
d = modal.Dict.from_name(sys.argv[1], create_if_missing=True)
d.update({f"k{i}": i * i for i in range(100)})
d["last"] = "acknowledged"
print("written")
"""

READ = """
import modal, sys
d = modal.Dict.from_name(sys.argv[1])
print("len", d.len(), d["last"], d["k9"])
"""


@pytest.mark.timeout(120)
def test_acknowledged_entries_survive_kill_9(restartable_server: RestartableServer) -> None:
    assert "len 101 acknowledged 81" in survives_kill_9(restartable_server, WRITE, READ, _name())
