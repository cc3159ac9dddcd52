"""Fetching a file through a sandbox's tunnels: the TLS one (kiln's CA) and the plain TCP one."""

from __future__ import annotations

import ssl
import time
import urllib.request

import modal


def fetch_through_tunnels(sb: modal.Sandbox, cafile: str, secure: int, plain: int, path: str) -> list[str]:
    """`path` from the server behind port `secure`'s TLS tunnel, then behind `plain`'s TCP one
    (each asked again until the server inside listens)."""
    tunnels = sb.tunnels()
    host, port = tunnels[plain].tcp_socket
    trusted = ssl.create_default_context(cafile=cafile)
    bodies = []
    for url, context in ((f"{tunnels[secure].url}{path}", trusted), (f"http://{host}:{port}{path}", None)):
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    bodies.append(response.read().decode())
                    break
            except OSError:
                time.sleep(0.1)
    return bodies
