"""The COPY script (run here with /bin/sh against temp dirs) and build-context digests."""

import subprocess
from pathlib import Path

import pytest

from kiln.errors import ImageBuildError
from kiln.images import builder
from kiln.images.builder import BuildContext, copy_script


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "a.txt").write_text("A")
    (context / "b.py").write_text("B")
    (context / "c.py").write_text("C")
    (context / "my file.txt").write_text("spaces")
    pkg = context / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("init")
    (pkg / "sub" / "mod.py").write_text("mod")
    monkeypatch.setattr(builder, "CONTEXT_MOUNT", str(context))
    return context


def run_copy(argument: str, workdir: str = "/") -> subprocess.CompletedProcess[str]:
    script = copy_script(argument, workdir)
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10, check=False)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_file_into_directory(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f"a.txt {out}/").returncode == 0
    assert tree(out) == {"a.txt": "A"}


def test_file_to_a_new_name(ctx: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "deep" / "renamed.txt"
    assert run_copy(f"a.txt {dest}").returncode == 0
    assert dest.read_text() == "A"
    assert tree(tmp_path / "out") == {"deep/renamed.txt": "A"}


def test_directory_copies_its_contents(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "app"
    assert run_copy(f"pkg {out}").returncode == 0
    assert tree(out) == {"__init__.py": "init", "sub/mod.py": "mod"}


def test_whole_context(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "app"
    assert run_copy(f". {out}").returncode == 0
    assert tree(out) == tree(ctx)


def test_glob(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f"*.py {out}/").returncode == 0
    assert tree(out) == {"b.py": "B", "c.py": "C"}


def test_several_sources_go_into_the_destination_directory(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f"a.txt b.py {out}").returncode == 0
    assert tree(out) == {"a.txt": "A", "b.py": "B"}


def test_leading_slash_in_source_is_relative_to_the_context(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f"/a.txt {out}/").returncode == 0
    assert tree(out) == {"a.txt": "A"}


def test_quoted_source_with_spaces(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f'"my file.txt" {out}/').returncode == 0
    assert tree(out) == {"my file.txt": "spaces"}


def test_destination_with_shell_metacharacters_is_not_interpreted(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "o$(touch pwned)"
    result = run_copy(f"a.txt '{out}/'")
    assert result.returncode == 0, result.stderr
    assert (out / "a.txt").read_text() == "A"
    assert not (ctx / "pwned").exists()


def test_relative_destination_is_under_the_workdir(ctx: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    assert run_copy("a.txt sub/", workdir=str(workdir)).returncode == 0
    assert tree(workdir) == {"sub/a.txt": "A"}


def test_flags_such_as_chown_do_not_count_as_paths(ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_copy(f"--chown=1000:1000 a.txt {out}/").returncode == 0
    assert tree(out) == {"a.txt": "A"}


def test_missing_source_fails_naming_it(ctx: Path, tmp_path: Path) -> None:
    result = run_copy(f"nope.txt {tmp_path}/out/")
    assert result.returncode != 0
    assert "nope.txt" in result.stderr


def test_glob_matching_nothing_fails(ctx: Path, tmp_path: Path) -> None:
    result = run_copy(f"*.rs {tmp_path}/out/")
    assert result.returncode != 0


def test_source_outside_the_context_is_refused(ctx: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    out = tmp_path / "out"
    with pytest.raises(ImageBuildError, match="outside the build context"):
        run_copy(f"../outside.txt {out}/")
    assert not (out / "outside.txt").exists()


def test_glob_of_several_files_to_a_file_dest_keeps_all_or_fails(ctx: Path, tmp_path: Path) -> None:
    # Docker refuses several sources with a destination not ending in "/"; never keep just the last.
    dest = tmp_path / "out" / "single"
    result = run_copy(f"*.py {dest}")
    assert result.returncode != 0 or tree(dest) == {"b.py": "B", "c.py": "C"}


def test_copy_from_another_image_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="--from"):
        copy_script("--from=builder /out /app", "/")


@pytest.mark.parametrize("argument", ["only-one", "--chown=1 only-one", ""])
def test_copy_needs_source_and_destination(argument: str) -> None:
    with pytest.raises(ImageBuildError):
        copy_script(argument, "/")


# -- BuildContext.digest --------------------------------------------------------------------------


def test_context_digest_is_deterministic_and_order_insensitive() -> None:
    one = BuildContext(digests={"a": "1", "b": "2"})
    two = BuildContext(digests={"b": "2", "a": "1"})
    assert one.digest() == two.digest()
    assert len(one.digest()) == 64


def test_context_digest_depends_on_paths_and_contents() -> None:
    base = BuildContext(digests={"a": "1", "b": "2"}).digest()
    assert base != BuildContext(digests={"a": "1", "b": "3"}).digest()
    assert base != BuildContext(digests={"a": "1", "c": "2"}).digest()
    assert base != BuildContext(digests={"a": "1"}).digest()
    assert BuildContext().digest() != BuildContext(digests={"": ""}).digest()


def test_context_digest_ignores_host_locations(tmp_path: Path) -> None:
    one = BuildContext(files={"a": tmp_path / "x"}, digests={"a": "1"})
    two = BuildContext(files={"a": tmp_path / "y"}, digests={"a": "1"})
    assert one.digest() == two.digest()
