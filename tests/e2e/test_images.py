"""Image steps, build secrets, build functions, Dockerfiles and base images, built by a real kiln
server for the official client, and checked from inside the containers that run on them."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from kiln.images.pythons import find_host_pythons
from tests.conftest import KilnServer, run_modal

pytestmark = pytest.mark.e2e


def reports(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.findall(r"^REPORT (\w+) (.*)$", result.stdout, re.MULTILINE)
    return {name: ast.literal_eval(value) for name, value in found}


def run_steps(kiln: KilnServer, which: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_modal(kiln, "run", "image_steps_app.py", "--which", which, env=env)


def layers_with_step(home: Path, text: str) -> list[Path]:
    return [
        p.parent for p in (home / "layers").glob("*/layer.json") if text in json.loads(p.read_text())["step"]
    ]


def test_package_steps(kiln: KilnServer) -> None:
    report = reports(run_steps(kiln, "packages"))["packages"]
    assert isinstance(report, dict)
    assert report["modules"] == ["six", "idna", "iniconfig", "tomli", "packaging", "pluggy"]
    assert report["hello"] == "Hello, world!"  # apt_install
    assert report["uv"].startswith("uv 0.8.0")  # the last uv copied in: the pinned uv_version


def test_uv_sync_functions_run_in_the_project_environment(kiln: KilnServer) -> None:
    assert reports(run_steps(kiln, "uv_sync"))["uv_sync"] == {"prefix": "/.uv/.venv", "attrs": True}


def test_config_steps(kiln: KilnServer) -> None:
    report = reports(run_steps(kiln, "config"))["config"]
    assert report == {"greeting": "hello world", "cwd": "/srv/app", "shell": "/bin/bash"}
    (cmd_layer,) = {p for p in layers_with_step(kiln.home, 'CMD ["echo", "kiln-cmd"]')}
    config = json.loads((cmd_layer / "layer.json").read_text())["config"]
    assert config["cmd"] == ["echo", "kiln-cmd"]
    assert config["entrypoint"] == ["/usr/bin/env"]
    assert config["shell"] == ["/bin/bash", "-c"]


def test_build_secrets_are_present_in_their_step_only(kiln: KilnServer) -> None:
    secret = f"kiln-secret-{uuid.uuid4().hex}"
    result = run_steps(kiln, "secret", KILN_TEST_SECRET=secret)
    report = reports(result)["secret"]
    assert report == {"sha256": hashlib.sha256(secret.encode()).hexdigest(), "env": None}
    output = result.stdout + result.stderr
    assert "the token is ***" in output
    assert secret not in output
    for layer in layers_with_step(kiln.home, "KILN_TOKEN"):
        for path in (p for p in layer.rglob("*") if p.is_file()):
            assert secret.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    assert secret not in kiln.log()


def test_run_function_bakes_a_layer_keyed_by_its_arguments(kiln: KilnServer) -> None:
    name = f"loaf{uuid.uuid4().hex[:6]}"
    first = run_steps(kiln, "baked", KILN_BAKE_NAME=name)
    assert reports(first)["baked"] == [f"{name}-0.txt", f"{name}-1.txt"]
    assert f"baked 2 for {name}" in first.stdout + first.stderr  # the function's output is the build log
    again = run_steps(kiln, "baked", KILN_BAKE_NAME=name)
    assert reports(again)["baked"] == [f"{name}-0.txt", f"{name}-1.txt"]
    assert "run_function: bake" not in again.stdout + again.stderr  # same source and arguments: cached
    baked = layers_with_step(kiln.home, "run_function: bake")
    (layer,) = [p for p in baked if (p / "fs" / "baked" / f"{name}-0.txt").exists()]
    assert sorted(p.name for p in (layer / "fs").iterdir()) == ["baked"]  # no mounts, sockets or caches


def test_dockerfile_commands_with_context_files(kiln: KilnServer) -> None:
    report = reports(run_steps(kiln, "dockerfile"))["dockerfile"]
    assert report == {"files": ["copied.txt", "hello.txt", "sub/s.txt"], "copied": "hello from the context"}


def test_from_dockerfile_with_stages_build_args_and_ignore(kiln: KilnServer) -> None:
    report = reports(run_steps(kiln, "from_dockerfile"))["from_dockerfile"]
    assert isinstance(report, dict)
    assert report == {
        "artifact": "built-in-stage",
        "context": ["Dockerfile", "kept.txt"],
        "greeting": "from-build-args",
        "cwd": "/opt/context",
        "python": report["python"],
    }


SUPPORTED_MINORS = ["3.10", "3.11", "3.12", "3.13"]  # modal 1.6.4's 2025.06 builder, which this machine has


@pytest.mark.slow
@pytest.mark.parametrize("minor", SUPPORTED_MINORS)
def test_debian_slim_for_every_python_the_machine_has(kiln: KilnServer, minor: str) -> None:
    if minor not in find_host_pythons():
        pytest.skip(f"this machine has no CPython {minor}")
    result = run_modal(kiln, "run", "pythons_app.py", env={"KILN_PYTHON": minor})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"python-version: {minor}." in result.stdout


def test_unsupported_features_fail_with_a_message(kiln: KilnServer) -> None:
    result = run_modal(kiln, "run", "bad_images.py", env={"IMAGE_CASE": "micromamba"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "mambaorg/micromamba" in output and "Could not reach the registry" in output
    result = run_modal(kiln, "run", "bad_images.py", env={"IMAGE_CASE": "gpu-build"})
    assert result.returncode != 0
    assert "GPU build steps" in result.stdout + result.stderr
