"""Image steps from Modal's images guide, each checked from inside a container."""

import hashlib
import os
import subprocess
import sys

import modal

app = modal.App("kiln-test-image-steps")

packages = (
    modal.Image.debian_slim()
    .run_commands("mkdir -p /wheels")
    .pip_install(
        "six",
        index_url="https://pypi.org/simple",
        extra_index_url="https://pypi.org/simple",
        find_links="/wheels",
        pre=True,
        extra_options="--no-compile",
    )
    .uv_pip_install("idna")
    .uv_pip_install("iniconfig", uv_version="0.8.0")
    .pip_install_from_requirements("data/requirements.txt")
    .pip_install_from_pyproject("data/pyproject.toml", optional_dependencies=["extra"])
    .apt_install("hello")
)

# uv_sync puts the project's virtualenv first on PATH: functions run in it.
uv_project = modal.Image.debian_slim().uv_sync("data/uvproj")

configured = (
    modal.Image.debian_slim()
    .env({"KILN_GREETING": "hello world"})
    .workdir("/srv/app")
    .shell(["/bin/bash", "-c"])
    .run_commands("echo $0 > shell.txt")
    .entrypoint(["/usr/bin/env"])
    .cmd(["echo", "kiln-cmd"])
)

SECRET = os.environ.get("KILN_TEST_SECRET", "kiln-default-secret")
with_secret = modal.Image.debian_slim().run_commands(
    'echo "the token is $KILN_TOKEN" && printf %s "$KILN_TOKEN" | sha256sum | cut -c1-64 > /token.sha256',
    secrets=[modal.Secret.from_dict({"KILN_TOKEN": SECRET})],
)


def bake(name: str, count: int = 1) -> None:
    import pathlib

    pathlib.Path("/baked").mkdir()
    for i in range(count):
        pathlib.Path(f"/baked/{name}-{i}.txt").write_text(name)
    print(f"baked {count} for {name}")


baked = modal.Image.debian_slim().run_function(
    bake, kwargs={"name": os.environ.get("KILN_BAKE_NAME", "bread"), "count": 2}
)

dockerfile_steps = modal.Image.debian_slim().dockerfile_commands(
    [
        "COPY data/context/hello.txt /ctx/hello.txt",
        "COPY data/context/sub /ctx/sub",
        "RUN cat /ctx/hello.txt > /ctx/copied.txt",
    ]
)

from_dockerfile = modal.Image.from_dockerfile(
    "data/dockerfile/Dockerfile",
    context_dir="data/dockerfile",
    ignore=["*.log", "secret*"],
    build_args={"GREETING": "from-build-args"},
)


@app.function(image=packages)
def package_report() -> dict:
    import idna
    import iniconfig
    import packaging
    import pluggy
    import six
    import tomli

    return {
        "modules": [m.__name__ for m in (six, idna, iniconfig, tomli, packaging, pluggy)],
        "hello": subprocess.run(["hello"], capture_output=True, text=True).stdout.strip(),
        "uv": subprocess.run(["/.uv/uv", "--version"], capture_output=True, text=True).stdout.strip(),
    }


@app.function(image=uv_project)
def uv_sync_report() -> dict:
    import attrs

    return {"prefix": sys.prefix, "attrs": attrs.__version__ != ""}


@app.function(image=configured)
def config_report() -> dict:
    return {
        "greeting": os.environ.get("KILN_GREETING"),
        "cwd": os.getcwd(),
        "shell": open("/srv/app/shell.txt").read().strip(),
    }


@app.function(image=with_secret)
def secret_report() -> dict:
    return {"sha256": open("/token.sha256").read().strip(), "env": os.environ.get("KILN_TOKEN")}


@app.function(image=baked)
def baked_report() -> list:
    return sorted(os.listdir("/baked"))


@app.function(image=dockerfile_steps)
def dockerfile_report() -> dict:
    return {
        "files": sorted(
            os.path.relpath(os.path.join(d, f), "/ctx") for d, _, fs in os.walk("/ctx") for f in fs
        ),
        "copied": open("/ctx/copied.txt").read().strip(),
    }


@app.function(image=from_dockerfile)
def from_dockerfile_report() -> dict:
    return {
        "artifact": open("/opt/artifact.txt").read().strip(),
        "context": sorted(os.listdir("/opt/context")),
        "greeting": os.environ.get("KILN_GREETING"),
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
    }


@app.local_entrypoint()
def main(which: str = "all"):
    reports = {
        "packages": package_report,
        "uv_sync": uv_sync_report,
        "config": config_report,
        "secret": secret_report,
        "baked": baked_report,
        "dockerfile": dockerfile_report,
        "from_dockerfile": from_dockerfile_report,
    }
    for name, function in reports.items():
        if which in ("all", name):
            print(f"REPORT {name} {function.remote()!r}")
    print("expected-secret-sha256", hashlib.sha256(SECRET.encode()).hexdigest())
