"""Local files: `add_local_file`/`add_local_dir` (mounted at start, or copied into a layer),
`ignore=`, `add_local_python_source`, `include_source`, and mounts being read-only."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def run_app(kiln: KilnServer, which: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_modal(
        kiln, "run", "local_files_app.py", "--which", which, env={"MODAL_LOGLEVEL": "DEBUG", **env}
    )


def report(result: subprocess.CompletedProcess[str], name: str) -> object:
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(rf"^REPORT {name} (.*)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return ast.literal_eval(match.group(1))


def uploaded(result: subprocess.CompletedProcess[str]) -> int:
    """Files the client uploaded (it checks every file's hash with the server first)."""
    return sum(int(n) for n in re.findall(r"Uploaded (\d+) new files", result.stdout + result.stderr))


def build_steps(result: subprocess.CompletedProcess[str]) -> list[str]:
    return re.findall(r"^=> Step \d+/\d+: (.*)$", result.stdout + result.stderr, re.MULTILINE)


@pytest.fixture
def local_dir(tmp_path: Path) -> Path:
    root = tmp_path / "local"
    for rel, text in {
        "a.txt": "a",
        "sub/b.txt": "b",
        "x.skip": "ignored by pattern",
        "cache/c.txt": "ignored by directory pattern",
        "y.tmp": "ignored by predicate (copy=True)",
        "unique.txt": str(tmp_path),
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_mounted_files_are_there_read_only_and_ignore_patterns_hold(
    kiln: KilnServer, local_dir: Path
) -> None:
    result = run_app(kiln, "mounted", KILN_MOUNTED_DIR=str(local_dir))
    found = report(result, "mounted")
    assert isinstance(found, dict)
    assert found["data"] == {
        "a.txt": "a",
        "sub/b.txt": "b",
        "y.tmp": "ignored by predicate (copy=True)",
        "unique.txt": str(local_dir.parent),
    }
    assert found["file"] == "hello from the context"
    assert found["write_data"] == "EROFS" and found["overwrite_data"] == "EROFS"
    assert found["write_root"] == "ok"  # the image's own directories stay writable
    assert found["source"] == ["local_files_app.py"]  # the app's file, not its neighbours
    assert found["other"] is False


def test_editing_a_mounted_file_builds_nothing_and_uploads_only_that_file(
    kiln: KilnServer, local_dir: Path
) -> None:
    first = run_app(kiln, "mounted", KILN_MOUNTED_DIR=str(local_dir))
    assert report(first, "mounted")
    (local_dir / "a.txt").write_text(f"changed {local_dir}")
    again = run_app(kiln, "mounted", KILN_MOUNTED_DIR=str(local_dir))
    found = report(again, "mounted")
    assert isinstance(found, dict) and found["data"]["a.txt"] == f"changed {local_dir}"
    assert build_steps(again) == []
    assert uploaded(again) == 1


def test_two_functions_see_only_their_own_mounts(kiln: KilnServer) -> None:
    result = run_app(kiln, "other")
    assert report(result, "other") == {"other": ["s.txt"], "data": False}


def test_copied_files_are_a_layer_that_later_steps_read(kiln: KilnServer, local_dir: Path) -> None:
    first = run_app(kiln, "copied", KILN_COPIED_DIR=str(local_dir))
    found = report(first, "copied")
    assert isinstance(found, dict)
    assert found["listing"] == ["./a.txt", "./cache/c.txt", "./sub/b.txt", "./unique.txt", "./x.skip"]
    (local_dir / "sub" / "b.txt").write_text("B!")
    again = run_app(kiln, "copied", KILN_COPIED_DIR=str(local_dir))
    found = report(again, "copied")
    assert isinstance(found, dict) and "B!" in found["all"]
    # Only the changed layer and what follows it rebuild; the base image stays cached.
    assert [s.split()[0] for s in build_steps(again)] == ["COPY", "RUN"]


def test_local_python_sources_are_importable(kiln: KilnServer) -> None:
    result = run_app(kiln, "sources")
    assert report(result, "sources") == ["from-localsrc-pkg", "from-localsrc-module"]


def test_module_mode_mounts_the_package_unless_include_source_is_false(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "-m", "localsrc_pkg.app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with-source: ['__init__.py', 'app.py', 'extra.py', 'nosrc_app.py']" in result.stdout
    assert "without-source: ['__init__.py', 'app.py']" in result.stdout


def test_app_level_include_source_false(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "-m", "localsrc_pkg.nosrc_app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "nosrc: {'pkg': ['__init__.py', 'nosrc_app.py'], 'module': 'from-localsrc-module'}" in result.stdout
    )


@pytest.mark.slow
def test_ten_thousand_files_then_one_changed_uploads_one(kiln: KilnServer, tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(10_000):
        path = root / f"d{i // 500:02d}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{tmp_path} {i}")
    first = run_app(kiln, "mounted", KILN_MOUNTED_DIR=str(root))
    found = report(first, "mounted")
    assert isinstance(found, dict) and len(found["data"]) == 10_000
    assert uploaded(first) >= 10_000
    (root / "d07" / "f03500.txt").write_text(f"changed {tmp_path}")
    again = run_app(kiln, "mounted", KILN_MOUNTED_DIR=str(root))
    found = report(again, "mounted")
    assert isinstance(found, dict) and found["data"]["d07/f03500.txt"] == f"changed {tmp_path}"
    assert uploaded(again) == 1
    assert build_steps(again) == []
