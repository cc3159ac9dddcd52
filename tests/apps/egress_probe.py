"""Run inside a sandbox by tests/e2e/test_sandbox_egress.py (as `python -c`): tries a TCP
connection to each HOST:PORT argument and prints one JSON object, target → what happened
("ok:<first bytes>", an errno name such as "ECONNREFUSED", or "timeout") and how long it took."""

import errno
import json
import socket
import sys
import time

found = {}
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    started = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
            outcome = "ok:" + sock.recv(16).decode()
    except socket.timeout:
        outcome = "timeout"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno or 0, str(exc))
    found[target] = [outcome, round(time.monotonic() - started, 3)]
print(json.dumps(found), flush=True)
