"""Small pure parts of the image builder: references, Dockerfile helpers, masked build output."""

import pytest

from kiln.errors import ImageBuildError
from kiln.images.output import StepOutput
from kiln.images.registry import parse_reference
from kiln.images.steps import (
    ImageConfig,
    apply_config_step,
    parse_arg,
    parse_dockerfile,
    parse_from,
    split_flags,
)


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag", "url"),
    [
        ("python:3.11-slim", "docker.io", "library/python", "3.11-slim", "https://registry-1.docker.io"),
        (
            "mambaorg/micromamba:1.5",
            "docker.io",
            "mambaorg/micromamba",
            "1.5",
            "https://registry-1.docker.io",
        ),
        ("ghcr.io/astral-sh/uv", "ghcr.io", "astral-sh/uv", "latest", "https://ghcr.io"),
        ("127.0.0.1:5000/kiln/test:v1", "127.0.0.1:5000", "kiln/test", "v1", "http://127.0.0.1:5000"),
        ("localhost/a@sha256:" + "0" * 64, "localhost", "a", "sha256:" + "0" * 64, "http://localhost"),
    ],
)
def test_references(reference: str, registry: str, repository: str, tag: str, url: str) -> None:
    ref = parse_reference(reference)
    assert (ref.registry, ref.repository, ref.tag, ref.base_url) == (registry, repository, tag, url)


def test_invalid_reference_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="not a valid image reference"):
        parse_reference("Bad Name:1")


def test_from_lines() -> None:
    assert parse_from("python:3.11") == ("python:3.11", "")
    assert parse_from("--platform=linux/amd64 python:3.11 AS build") == ("python:3.11", "build")
    with pytest.raises(ImageBuildError):
        parse_from("a b c d")


def test_flags_and_args() -> None:
    assert split_flags("--from=build --chown=1:1 a b") == ({"from": "build", "chown": "1:1"}, "a b")
    assert split_flags("a --b") == ({}, "a --b")
    assert parse_arg("VERSION=1.2") == ("VERSION", "1.2")
    assert parse_arg("NAME") == ("NAME", None)


def test_build_args_expand_in_env_and_workdir() -> None:
    config = ImageConfig()
    for step in parse_dockerfile(["ENV V=${VERSION}", "WORKDIR /opt/$VERSION"]):
        apply_config_step(config, step, {"VERSION": "7"})
    assert config.env == {"V": "7"} and config.workdir == "/opt/7"


def test_secret_values_are_masked_even_across_reads() -> None:
    logged: list[str] = []
    output = StepOutput(logged.append, {"TOKEN": "s3cr3t-value", "SHORT": "x"})
    output.write(1, b"token: s3cr3t-")
    output.write(1, b"value\nnext x line\npartial")
    output.flush()
    text = "".join(logged)
    assert "s3cr3t" not in text
    assert text == "token: ***\nnext x line\npartial"
    assert output.tail == ["token: ***", "next x line", "partial"]
