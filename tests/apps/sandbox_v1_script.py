"""Sandboxes driven through the official client, one batch of checks a run (`python
sandbox_v1_script.py CHECKS`); tests/e2e/test_sandboxes_v1.py runs it with MODAL_SANDBOX_V2=0 (the
client's V1 protocol) or with the default setting, and reads the JSON it prints last."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import modal
import modal.exception
from grpclib.client import Channel
from modal.sandbox._common import _is_v1_sandbox_id
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientStub
from sandbox_tunnels import fetch_through_tunnels

APP_NAME = "kiln-test-sandboxes-v1"
app = modal.App.lookup(APP_NAME, create_if_missing=True)
image = modal.Image.debian_slim()
report: dict[str, Any] = {}


def raises(call: Callable[[], object]) -> str:
    """The name and message of what `call` raised ("" if nothing)."""
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def entrypoint() -> None:
    """The entrypoint's stdout, stderr, stdin and exit code, over SandboxGetLogs and
    SandboxStdinWrite; an entry ID resumes the output where it says."""
    sb = modal.Sandbox.create(
        "sh", "-c", "echo hello; echo oops >&2; read line; echo got $line; printf 'caf\\303\\251\\n'; exit 3",
        app=app, image=image,
    )  # fmt: skip
    report["v1_ids"] = _is_v1_sandbox_id(sb.object_id) and not sb._get_task_id().endswith("V")
    sb.stdin.write(b"abc\n")
    sb.stdin.drain()
    report["stdout"] = sb.stdout.read()
    report["stderr"] = sb.stderr.read()
    sb.wait()
    report["returncode"] = (sb.returncode, sb.poll())
    report["resumed"] = asyncio.run(_logs_from(sb.object_id, "6"))


async def _logs_from(sandbox_id: str, entry_id: str) -> str:
    """The entrypoint's stdout from an entry ID on, asked of the server directly."""
    host, port = os.environ["MODAL_SERVER_URL"].removeprefix("http://").rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        request = api_pb2.SandboxGetLogsRequest(
            sandbox_id=sandbox_id,
            file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT,
            last_entry_id=entry_id,
            timeout=5,
        )
        metadata = {
            "x-modal-token-id": os.environ["MODAL_TOKEN_ID"],
            "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"],
        }
        batches = await ModalClientStub(channel).SandboxGetLogs(request, metadata=metadata)
    finally:
        channel.close()
    return "".join(item.data for batch in batches for item in batch.items)


def running() -> None:
    """One long-running sandbox: exec, filesystem, tunnels, lookups, tags, snapshots, terminate."""
    name = f"v1-{uuid.uuid4().hex[:8]}"
    sb = modal.Sandbox.create(
        "sh", "-c", "mkdir -p /srv && echo tunnel-ok > /srv/ok.txt && cd /srv && "
        "(python -m http.server 8001 &) && exec python -m http.server 8000",
        app=app, image=image, name=name, encrypted_ports=[8000], unencrypted_ports=[8001],
        env={"FROM_ENV": "yes"}, workdir="/tmp",
    )  # fmt: skip
    try:
        process = sb.exec("sh", "-c", "read x; echo $x $FROM_ENV $(pwd); echo err >&2; exit 4")
        process.stdin.write(b"piped\n")
        process.stdin.write_eof()
        process.stdin.drain()
        report["exec"] = [process.stdout.read(), process.stderr.read(), process.wait()]
        sb.filesystem.write_text("written through the filesystem API\n", "/data/f.txt")
        report["filesystem"] = [
            sb.filesystem.read_text("/data/f.txt"),
            sb.exec("cat", "/data/f.txt").stdout.read(),
        ]
        report["tunnels"] = fetch_through_tunnels(sb, os.environ["KILN_CA_BUNDLE"], 8000, 8001, "/ok.txt")
        sb.set_tags({"role": "v1", "team": name})
        report["tags"] = sb.get_tags()
        by_id = modal.Sandbox.from_id(sb.object_id)
        report["from_id"] = [by_id.poll(), by_id.exec("echo", "same").stdout.read()]
        report["from_name"] = modal.Sandbox.from_name(APP_NAME, name).object_id == sb.object_id
        listed = [s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": name})]
        report["listed"] = listed == [sb.object_id]
        sb.exec("sh", "-c", "echo kept > /root/state.txt").wait()
        snapshots = [sb.snapshot_filesystem()]
        os.environ["MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT"] = "1"  # the V1 RPC: SandboxSnapshotFs
        snapshots.append(sb.snapshot_filesystem())
        del os.environ["MODAL_USE_LEGACY_FILESYSTEM_SNAPSHOT"]
        report["alive_after_snapshots"] = sb.exec("echo", "alive").stdout.read()
    finally:
        sb.terminate()
    report["terminated"] = [raises(sb.wait), sb.returncode, raises(lambda: sb.exec("echo", "late"))]
    report["listed_after_terminate"] = sb.object_id in {
        s.object_id for s in modal.Sandbox.list(app_id=app.app_id)
    }
    later = []
    for snapshot in snapshots:
        restored = modal.Sandbox.create("cat", "/root/state.txt", app=app, image=snapshot)
        later.append(restored.stdout.read())
        restored.wait()
    report["snapshots"] = later
    timed = modal.Sandbox.create("sleep", "600", app=app, image=image, timeout=2)
    report["timeout"] = [raises(timed.wait), timed.returncode]


def left_running() -> None:
    """A sandbox left running for `modal container list` and `modal container stop`."""
    sb = modal.Sandbox.create("sleep", "600", app=app, image=image)
    report["sandbox"] = [sb.object_id, sb._get_task_id(), app.app_id]


def ended() -> None:
    sb = modal.Sandbox.from_id(sys.argv[2])
    report["ended"] = [sb.poll(), raises(sb.wait)]


def pty() -> None:
    """pty=True at Sandbox.create: the entrypoint on a terminal of the sandbox's own; its output
    (both streams: one terminal) through SandboxGetLogs, stdin typed into it."""
    sb = modal.Sandbox.create(
        "sh",
        "-c",
        "tty; echo to-stderr >&2; read line; echo got $line; exit 5",
        app=app,
        image=image,
        pty=True,
    )
    sb.stdin.write(b"typed\n")
    sb.stdin.drain()
    report["pty"] = [
        _is_v1_sandbox_id(sb.object_id),
        sb.stdout.read(),
        sb.stderr.read(),
        sb.wait() or sb.returncode,
    ]


def gpu() -> None:
    """gpu= on a machine without that GPU: refused with the fix (or, with the CPU fallback, run
    on the CPU); the server keeps serving."""
    try:
        sb = modal.Sandbox.create(app=app, image=image, gpu="T4")
    except modal.exception.Error as exc:
        report["gpu"] = f"{type(exc).__name__}: {exc}"
    else:
        report["gpu"] = sb.exec("sh", "-c", "echo ${CUDA_VISIBLE_DEVICES:-none}").stdout.read()
        sb.terminate()
    plain = modal.Sandbox.create("echo", "still serving", app=app, image=image)
    report["after_gpu"] = plain.stdout.read()


for check in sys.argv[1].split(","):
    globals()[check]()
print("REPORT " + json.dumps(report))
