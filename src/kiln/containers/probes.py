"""Readiness probes kiln runs inside a container (by its exec server, under the container's own
confinement, like any exec): `{"TcpConnect": PORT}` succeeds once something accepts a TCP
connection on the container's own 127.0.0.1:PORT. Standard library only, imported up front."""

from __future__ import annotations

import encodings.idna  # noqa: F401  (socket's codec, loaded now: after the chroot it is out of reach)
import json
import socket
import sys


def run(command_json: str) -> int:
    try:
        port = int(json.loads(command_json)["TcpConnect"])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", port))
            return 0
    except (OSError, ValueError, KeyError, TypeError):
        return 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
