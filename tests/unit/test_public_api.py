"""The package's public names and its error tree."""

import inspect

import kiln
import kiln.errors
import kiln.testing
from kiln.errors import KilnError


def test_all_names_exist() -> None:
    assert kiln.__all__
    missing = [name for name in kiln.__all__ if not hasattr(kiln, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(kiln.__all__) == len(set(kiln.__all__))


def test_version_is_a_string() -> None:
    assert isinstance(kiln.__version__, str) and kiln.__version__


def test_every_error_is_a_kiln_error() -> None:
    errors = [
        obj
        for _, obj in inspect.getmembers(kiln.errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == kiln.errors.__name__
    ]
    assert KilnError in errors and len(errors) > 1
    assert [e.__name__ for e in errors if not issubclass(e, KilnError)] == []
    assert issubclass(KilnError, Exception)


def test_every_error_is_exported() -> None:
    errors = {
        name for name, obj in inspect.getmembers(kiln.errors, inspect.isclass) if issubclass(obj, KilnError)
    }
    assert errors <= set(kiln.__all__)
    for name in errors:
        assert getattr(kiln, name) is getattr(kiln.errors, name)


def test_kiln_testing_exports_documented_names() -> None:
    assert len(kiln.testing.__all__) == len(set(kiln.testing.__all__))
    for name in kiln.testing.__all__:
        obj = getattr(kiln.testing, name)
        assert obj.__module__ == kiln.testing.__name__, name
        assert inspect.getdoc(obj), f"kiln.testing.{name} has no docstring"
