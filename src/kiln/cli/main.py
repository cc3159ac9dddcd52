"""`kiln`: run Modal apps on this machine.

kiln run app.py [ARGS]      embedded server + `modal run app.py ARGS`, then stop
kiln server                 a long-running server for your usual `modal run …`
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from kiln.auth import Credentials, is_loopback
from kiln.cli.images import image
from kiln.config import Config
from kiln.errors import KilnError
from kiln.server import KilnServer

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the server's event loop: uvloop where installed (its I/O is several times faster)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def client_env(grpc_url: str, home: Path, credentials: Credentials) -> dict[str, str]:
    """What the official client needs to talk to kiln instead of Modal: its URL and token pair."""
    config_path = home / "modal.toml"
    if not config_path.exists():
        config_path.write_text("")
    return {
        "MODAL_SERVER_URL": grpc_url,
        "MODAL_TOKEN_ID": credentials.token_id,
        "MODAL_TOKEN_SECRET": credentials.token_secret,
        # Keep the user's ~/.modal.toml profiles (which may point at Modal) out of the way.
        "MODAL_CONFIG_PATH": str(config_path),
    }


def fal_env(endpoints: Any) -> dict[str, str]:
    """What the official fal CLI and fal_client need to talk to kiln: the control plane (plain
    gRPC on loopback, which fal's test mode allows), a key (kiln's token pair), the https hosts of
    the data plane, and roots that trust kiln's local CA."""
    credentials = endpoints.credentials
    return {
        "FAL_GRPC_HOST": endpoints.fal_grpc_host,
        "ISOLATE_TEST_MODE": "1",
        "FAL_KEY": f"{credentials.token_id}:{credentials.token_secret}",
        "FAL_REST_HOST": endpoints.fal_rest_host,
        "FAL_QUEUE_RUN_HOST": endpoints.fal_queue_host,
        "FAL_WS_RUN_HOST": endpoints.fal_ws_host,
        "SSL_CERT_FILE": endpoints.ca_bundle,
        "FAL_RUN_HOST": endpoints.fal_run_host,
    }


@click.group()
@click.version_option(package_name="kiln")
def main() -> None:
    """kiln: an open, self-hosted backend for the official Modal client."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("modal_args", nargs=-1, type=click.UNPROCESSED, required=True)
def run(modal_args: tuple[str, ...]) -> None:
    """Run an app on an embedded kiln server: `kiln run app.py[::fn] [--arg v]` or `kiln run -m pkg.mod`."""
    logging.basicConfig(level=os.environ.get("KILN_LOG", "WARNING"), format="kiln: %(message)s")
    sys.exit(run_loop(_run(list(modal_args))))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("fal_args", nargs=-1, type=click.UNPROCESSED, required=True)
def fal(fal_args: tuple[str, ...]) -> None:
    """Run the fal CLI on an embedded kiln server: `kiln fal run app.py::MyApp`.

    Uses the `fal` on PATH (the user's own install of the official CLI), pointed at kiln."""
    logging.basicConfig(level=os.environ.get("KILN_LOG", "WARNING"), format="kiln: %(message)s")
    program = shutil.which("fal")
    if program is None:
        click.echo("kiln: the fal CLI is not on PATH; install it (`pip install fal`) and try again", err=True)
        sys.exit(2)
    sys.exit(run_loop(_run([program, *fal_args], fal=True)))


async def _run(argv: list[str], fal: bool = False) -> int:
    """Run a client command (`modal run …` by default) against an embedded server."""
    server = KilnServer(Config())
    try:
        endpoints = await server.start()
    except KilnError as exc:
        click.echo(f"kiln: {exc}", err=True)
        return 2
    try:
        exports = (
            fal_env(endpoints)
            if fal
            else client_env(endpoints.grpc_url, server.config.home, endpoints.credentials)
        )
        env = {**os.environ, **exports}
        command = argv if fal else [sys.executable, "-m", "modal", "run", *argv]
        child = await asyncio.create_subprocess_exec(*command, env=env)
        # Ctrl-C reaches the client too (same process group); it stops its app, then exits.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        return await child.wait()
    finally:
        await server.stop()


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="gRPC port for clients (default 50051).")
@click.option("--http-port", default=None, type=int, help="HTTP port for blobs (default: any free port).")
@click.option(
    "--gpu-fallback",
    type=click.Choice(["none", "cpu"]),
    default=None,
    help="`cpu`: run functions that ask for a GPU on the CPU, with a warning, when none matches.",
)
@click.option("--tls-cert", default=None, help="PEM certificate chain: serve gRPC and HTTP over TLS.")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert.")
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="Allow a --host beyond this machine without TLS (tokens and data travel in clear text).",
)
def server(
    host: str | None,
    port: int | None,
    http_port: int | None,
    gpu_fallback: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
) -> None:
    """Start a long-running kiln server; point `modal` at it with the printed exports."""
    logging.basicConfig(
        level=os.environ.get("KILN_LOG", "INFO"), format="%(asctime)s kiln %(levelname)s %(message)s"
    )
    defaults = Config()
    config = Config(
        home=defaults.home,
        host=host or defaults.host,
        port=port if port is not None else int(os.environ.get("KILN_PORT", "50051")),
        http_port=http_port if http_port is not None else defaults.http_port,
        gpu_fallback_cpu=defaults.gpu_fallback_cpu if gpu_fallback is None else gpu_fallback == "cpu",
        tls_cert=tls_cert or defaults.tls_cert,
        tls_key=tls_key or defaults.tls_key,
        insecure=insecure or defaults.insecure,
    )
    try:
        run_loop(_serve(config))
    except KeyboardInterrupt:
        pass


async def _serve(config: Config) -> None:
    server = KilnServer(config)
    try:
        endpoints = await server.start()
    except KilnError as exc:
        click.echo(f"kiln: {exc}", err=True)
        sys.exit(2)
    if not is_loopback(config.host) and not config.tls_cert:
        click.echo(
            f"kiln: WARNING: serving on {config.host} WITHOUT TLS (--insecure): the token and all data travel "
            "in clear text, readable by anyone on the network path.",
            err=True,
        )
    click.echo(f"kiln server ready in {server.ready_seconds * 1000:.0f} ms. Point the modal client at it:\n")
    for key, value in client_env(endpoints.grpc_url, config.home, endpoints.credentials).items():
        click.echo(f"  export {key}={value}")
    click.echo("\nthen `modal run app.py`. For the fal client:\n")
    for key, value in fal_env(endpoints).items():
        click.echo(f"  export {key}={value}")
    click.echo("\nthen `fal run app.py::MyApp`. Ctrl-C stops the server.", err=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    click.echo("kiln: stopping")
    await server.stop()


main.add_command(image)

if __name__ == "__main__":
    main()
