import pytest

from kiln.core.sandbox_paths import sandbox_path
from kiln.errors import InvalidRequest


@pytest.mark.parametrize(
    ("given", "normal"),
    [("/data", "/data"), ("/data/", "/data"), ("//a//b/./c/", "/a/b/c"), ("/a/.", "/a")],
)
def test_an_absolute_path_is_normalised(given: str, normal: str) -> None:
    assert sandbox_path(given, "mount") == normal


@pytest.mark.parametrize("verb", ["mount", "unmount", "snapshot"])
@pytest.mark.parametrize("root", ["/", "//", "/.", "/./"])
def test_the_root_is_refused_naming_the_fix(verb: str, root: str) -> None:
    with pytest.raises(InvalidRequest, match="is '/'"):
        sandbox_path(root, verb)


def test_a_snapshot_of_the_root_points_to_snapshot_filesystem() -> None:
    with pytest.raises(InvalidRequest, match="snapshot_filesystem"):
        sandbox_path("/", "snapshot")


@pytest.mark.parametrize("path", ["data", "./data", "", "data/.."])
def test_a_relative_path_is_refused_naming_the_absolute_one(path: str) -> None:
    with pytest.raises(InvalidRequest, match="relative; give an absolute path"):
        sandbox_path(path, "mount")


@pytest.mark.parametrize("path", ["/a/../etc", "/..", "/a/..", "/../a"])
def test_dot_dot_is_refused_even_where_it_would_stay_inside(path: str) -> None:
    with pytest.raises(InvalidRequest, match=r"holds '\.\.'"):
        sandbox_path(path, "snapshot")


def test_a_name_that_merely_starts_with_dots_is_a_name() -> None:
    assert sandbox_path("/a/..b/...", "unmount") == "/a/..b/..."


def test_a_nul_byte_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="NUL"):
        sandbox_path("/a\0b", "mount")
