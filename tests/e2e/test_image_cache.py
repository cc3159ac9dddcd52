"""Layer caching across apps, restarts and processes; forced and cache-ignoring builds; builds
killed mid-way; and the layer store's CLI (`kiln image ls`, `kiln image prune`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import APPS, KilnServer, run_modal, start_server, stop_server

pytestmark = pytest.mark.e2e


def run_cache_app(kiln: KilnServer, nonce: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = run_modal(kiln, "run", "cache_app.py", env={"KILN_NONCE": nonce, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: cache-hello" in result.stdout
    return result


def steps(result: subprocess.CompletedProcess[str]) -> list[str]:
    return re.findall(r"^=> Step \d+/\d+: (.*)$", result.stdout + result.stderr, re.MULTILINE)


def layer_of(home: Path, step: str) -> dict[str, object]:
    (meta,) = [p for p in (home / "layers").glob("*/layer.json") if json.loads(p.read_text())["step"] == step]
    return {"key": meta.parent.name, **json.loads(meta.read_text())}


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def second_server(kiln: KilnServer, tmp_path: Path):
    """Another kiln server process on the same KILN_HOME."""
    server = start_server(kiln.home, tmp_path / "second.log")
    yield server
    stop_server(server)


def test_a_cached_step_is_reused_across_apps_and_server_restarts(
    kiln: KilnServer, second_server: KilnServer, nonce: str
) -> None:
    first = run_cache_app(kiln, nonce)
    assert steps(first) == [f"RUN echo first-{nonce}", f"RUN echo middle-a-{nonce}", f"RUN echo last-{nonce}"]
    other_app = run_cache_app(kiln, nonce, KILN_APP_NAME="kiln-test-cache-twin")
    assert steps(other_app) == []
    restarted = run_cache_app(second_server, nonce)  # a fresh process: only the disk remembers
    assert steps(restarted) == []


def test_a_changed_step_rebuilds_itself_and_its_descendants_only(kiln: KilnServer, nonce: str) -> None:
    run_cache_app(kiln, nonce)
    changed = run_cache_app(kiln, nonce, KILN_MIDDLE="b")
    assert steps(changed) == [f"RUN echo middle-b-{nonce}", f"RUN echo last-{nonce}"]


def test_force_build_rebuilds_and_replaces(kiln: KilnServer, nonce: str) -> None:
    run_cache_app(kiln, nonce)
    before = layer_of(kiln.home, f"RUN echo last-{nonce}")
    forced = run_cache_app(kiln, nonce, KILN_FORCE_LAST="1")
    assert steps(forced) == [f"RUN echo last-{nonce}"]
    after = layer_of(kiln.home, f"RUN echo last-{nonce}")
    assert after["key"] == before["key"] and after["created_at"] != before["created_at"]

    everything = run_cache_app(kiln, nonce, MODAL_FORCE_BUILD="1")
    assert steps(everything) == [
        f"RUN echo first-{nonce}",
        f"RUN echo middle-a-{nonce}",
        f"RUN echo last-{nonce}",
    ]
    assert steps(run_cache_app(kiln, nonce)) == []


def test_ignore_cache_rebuilds_without_replacing(kiln: KilnServer, nonce: str) -> None:
    run_cache_app(kiln, nonce)
    before = layer_of(kiln.home, f"RUN echo first-{nonce}")
    ignoring = run_cache_app(kiln, nonce, MODAL_IGNORE_CACHE="1")
    assert steps(ignoring) == [
        f"RUN echo first-{nonce}",
        f"RUN echo middle-a-{nonce}",
        f"RUN echo last-{nonce}",
    ]
    cached = run_cache_app(kiln, nonce)
    assert steps(cached) == []
    layers = [p for p in (kiln.home / "layers").glob("*/layer.json") if f"first-{nonce}" in p.read_text()]
    assert len(layers) == 2  # the cache-ignoring build made its own layer
    assert (
        json.loads((kiln.home / "layers" / str(before["key"]) / "layer.json").read_text())["created_at"]
        == before["created_at"]
    )


def run_together(*runs: tuple[KilnServer, dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "modal", "run", "cache_app.py"],
            cwd=APPS,
            env={**server.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for server, env in runs
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_two_apps_asking_at_once_build_a_layer_once(kiln: KilnServer, nonce: str) -> None:
    env = {"KILN_NONCE": nonce, "KILN_SLOW": "4"}
    for result in run_together((kiln, env), (kiln, env)):
        assert result.returncode == 0, result.stdout + result.stderr
    assert kiln.log().count(f"slow-{nonce}): building") == 1


def test_two_servers_sharing_a_home_build_a_layer_once(
    kiln: KilnServer, second_server: KilnServer, nonce: str
) -> None:
    env = {"KILN_NONCE": nonce, "KILN_SLOW": "6"}
    for result in run_together((kiln, env), (second_server, env)):
        assert result.returncode == 0, result.stdout + result.stderr
    logs = kiln.log() + second_server.log()
    assert logs.count(f"slow-{nonce}): building") == 1


def test_a_build_killed_mid_way_leaves_no_half_layer(kiln: KilnServer, tmp_path: Path, nonce: str) -> None:
    doomed = start_server(kiln.home, tmp_path / "doomed.log")
    client = subprocess.Popen(
        [sys.executable, "-m", "modal", "run", "cache_app.py"],
        cwd=APPS,
        env={**doomed.env, "KILN_NONCE": nonce, "KILN_SLOW": "8"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while f"slow-{nonce}): building" not in doomed.log():
            assert time.monotonic() < deadline, doomed.log()
            time.sleep(0.2)
        time.sleep(1)
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
    finally:
        client.kill()
        client.wait()
        stop_server(doomed)
    assert not [p for p in (kiln.home / "layers").glob("*/layer.json") if f"slow-{nonce}" in p.read_text()]
    restarted = start_server(kiln.home, tmp_path / "restarted.log")
    try:
        assert not list((kiln.home / "layers").glob(f".staging-{doomed.process.pid}-*"))
        result = run_cache_app(restarted, nonce, KILN_SLOW="8")
        assert f"RUN sleep 8 && echo slow-{nonce}" in steps(result)
    finally:
        stop_server(restarted)


def kiln_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "image", *args],
        env={**os.environ, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_image_ls_and_prune(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, tmp_path / "server.log")
    try:
        (tmp_path / "file.txt").write_text("x" * 50_000)
        result = run_modal(
            server, "run", "scratch_store_app.py", env={"KILN_FILE": str(tmp_path / "file.txt")}
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        stop_server(server)
    listing = kiln_cli(home, "ls", "--layers")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"1 images, 2 layers, \d+\.\d kB", listing.stdout), listing.stdout
    assert "COPY . /" in listing.stdout and "base: scratch" in listing.stdout
    kept = kiln_cli(home, "prune")  # default: only what was unused for a day
    assert "removed 0 layers" in kept.stdout, kept.stdout + kept.stderr
    pruned = kiln_cli(home, "prune", "--all")
    assert re.search(r"removed 2 layers \(\d+\.\d kB\) and \d+ mount trees", pruned.stdout), (
        pruned.stdout + pruned.stderr
    )
    assert "0 images, 0 layers" in kiln_cli(home, "ls").stdout
