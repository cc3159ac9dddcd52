"""Sandboxes through the official client (in-process): create, stdio, exec, lookups, timeouts,
and escapes tried from inside a sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import modal
import modal.exception
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.task_command_router_grpc import TaskCommandRouterStub

from kiln.core.gpus import detect_gpus
from tests.conftest import APPS, KilnServer, RestartableServer, raw_stub, run_client, run_modal

pytestmark = pytest.mark.e2e

_STATUS = "grep -E '^(Uid|Gid|Cap(Inh|Prm|Eff|Amb)|NoNewPrivs|Seccomp):' /proc/self/status"
_NAMESPACES = "for n in cgroup ipc mnt net pid user uts; do readlink /proc/self/ns/$n; done"
_IDENTITY = f"{_STATUS}; {_NAMESPACES}; cat /proc/self/cgroup; stat -c %i /; hostname; echo END"


@pytest.fixture(scope="module")
def app(kiln: KilnServer) -> Iterator[modal.App]:
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
            patch.setenv(key, kiln.env[key])
        patch.syspath_prepend(str(APPS))
        yield modal.App.lookup("kiln-test-sandboxes-local", create_if_missing=True)


@pytest.fixture(scope="module")
def image(app: modal.App) -> modal.Image:
    return modal.Image.debian_slim()


def test_the_entrypoint_has_stdin_stdout_stderr_and_an_exit_code(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create(
        "sh", "-c", "echo hello; echo oops >&2; read line; echo got $line; exit 3", app=app, image=image
    )
    sb.stdin.write(b"abc\n")
    sb.stdin.drain()
    assert sb.stdout.read() == "hello\ngot abc\n"
    assert sb.stderr.read() == "oops\n"
    sb.wait()
    assert sb.returncode == 3
    assert sb.poll() == 3


@pytest.mark.timeout(120)
def test_exec_output_streams_while_the_command_runs(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        # The command answers only after it has read what we send once its first line arrived:
        # the first line must reach us while it still runs.
        process = sb.exec("sh", "-c", "echo ready; read reply; echo got $reply; echo fine >&2; exit 5")
        lines = iter(process.stdout)
        assert next(lines) == "ready\n"
        assert process.poll() is None
        process.stdin.write(b"pong\n")
        process.stdin.drain()
        assert next(lines) == "got pong\n"
        assert process.stderr.read() == "fine\n"
        assert process.wait() == 5
        assert process.returncode == 5
    finally:
        sb.terminate()


def test_exec_in_bytes_with_stdin_eof_workdir_env_and_secrets(app: modal.App, image: modal.Image) -> None:
    secret = modal.Secret.from_dict({"KILN_SB_SECRET": "s3cret"})
    sb = modal.Sandbox.create(app=app, image=image, workdir="/tmp", env={"FROM_SANDBOX": "yes"})
    try:
        binary = sb.exec("cat", text=False)
        binary.stdin.write(bytes(range(256)) * 4)
        binary.stdin.write_eof()
        binary.stdin.drain()
        assert binary.stdout.read() == bytes(range(256)) * 4
        assert binary.wait() == 0
        process = sb.exec(
            "sh", "-c", "pwd; echo $FROM_SANDBOX $EXTRA $KILN_SB_SECRET", workdir="/etc",
            env={"EXTRA": "given"}, secrets=[secret],
        )  # fmt: skip
        assert process.stdout.read() == "/etc\nyes given s3cret\n"
        assert sb.exec("pwd").stdout.read() == "/tmp\n"
    finally:
        sb.terminate()


def test_stream_types_devnull_and_stderr_into_stdout(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        quiet = sb.exec("sh", "-c", "echo out; echo err >&2", stdout=modal.stream_type.StreamType.DEVNULL)
        assert quiet.stderr.read() == "err\n"
        with pytest.raises(ValueError):
            quiet.stdout.read()
        assert quiet.wait() == 0
    finally:
        sb.terminate()


@pytest.mark.timeout(120)
def test_an_exec_past_its_timeout_is_ended(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        process = sb.exec("sleep", "60", timeout=1)
        # The server ends it (SIGKILL: 137), or the client gives up at its deadline first (-1).
        assert process.wait() in (-1, 137)
        later = sb.exec("echo", "still here")
        assert later.stdout.read() == "still here\n"
    finally:
        sb.terminate()


@pytest.mark.timeout(180)
def test_a_code_interpreter_keeps_one_python_process(
    kiln: KilnServer, app: modal.App, image: modal.Image
) -> None:
    interpreter = importlib.import_module("sandbox_interpreter").Interpreter(app, image)
    assert interpreter.run("x = 6 * 7")["stdout"] == ""
    assert interpreter.run("print(x)")["stdout"] == "42\n"
    assert (
        interpreter.run("import os; print(os.getpid())")["stdout"].strip()
        == interpreter.run("print(os.getpid())")["stdout"].strip()
    )
    assert interpreter.run("1/0")["error"] == "ZeroDivisionError: division by zero"
    assert interpreter.run("print(x + 1)")["stdout"] == "43\n"
    assert interpreter.close() == 0


def test_exec_runs_with_exactly_the_sandboxs_confinement(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create("sh", "-c", f"{_IDENTITY}; sleep 600", app=app, image=image)
    try:
        entrypoint = []
        for line in sb.stdout:
            entrypoint.append(line)
            if line == "END\n":
                break
        exec_identity = sb.exec("sh", "-c", _IDENTITY).stdout.read().splitlines(keepends=True)
        # Same ids, capabilities (effective, permitted, inheritable, ambient), no_new_privs and
        # seccomp filter; same seven namespaces, cgroups, root filesystem and hostname.
        assert exec_identity == entrypoint
        assert "Seccomp:\t2\n" in entrypoint and "NoNewPrivs:\t1\n" in entrypoint
        assert "Uid:\t0\t0\t0\t0\n" in entrypoint  # root of its own user namespace
    finally:
        sb.terminate()


def test_exec_needs_nothing_of_the_image(app: modal.App) -> None:
    bare = modal.Image.from_registry("debian:bookworm")  # no Python in it
    sb = modal.Sandbox.create(app=app, image=bare)
    try:
        assert sb.exec("sh", "-c", "command -v python3 || echo none").stdout.read() == "none\n"
        assert "bookworm" in sb.exec("cat", "/etc/os-release").stdout.read()
        assert sb.exec("no-such-command").wait() == 127
    finally:
        sb.terminate()


def test_lookups_by_id_name_app_and_tags(app: modal.App, image: modal.Image) -> None:
    name = f"named-{uuid.uuid4().hex[:8]}"
    sb = modal.Sandbox.create(app=app, image=image, name=name)
    other = modal.Sandbox.create(app=app, image=image)
    try:
        sb.set_tags({"role": "worker", "team": "a"})
        other.set_tags({"role": "worker", "team": "b"})
        assert modal.Sandbox.from_id(sb.object_id).exec("echo", "same").stdout.read() == "same\n"
        assert modal.Sandbox.from_name("kiln-test-sandboxes-local", name).object_id == sb.object_id
        assert sb.get_tags() == {"role": "worker", "team": "a"}
        listed = {s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"role": "worker"})}
        assert {sb.object_id, other.object_id} <= listed
        team_a = {s.object_id for s in modal.Sandbox.list(app_id=app.app_id, tags={"team": "a"})}
        assert sb.object_id in team_a and other.object_id not in team_a
        with pytest.raises(modal.exception.AlreadyExistsError):
            modal.Sandbox.create(app=app, image=image, name=name)
        with pytest.raises(modal.exception.NotFoundError):
            modal.Sandbox.from_name("kiln-test-sandboxes-local", "no-such-sandbox")
    finally:
        sb.terminate()
        other.terminate()
    assert sb.object_id not in {s.object_id for s in modal.Sandbox.list(app_id=app.app_id)}


def test_terminate_ends_the_sandbox_and_its_execs(app: modal.App, image: modal.Image) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    process = sb.exec("sleep", "600")
    sb.terminate()
    with pytest.raises(modal.exception.SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137
    assert process.wait() != 0
    with pytest.raises(modal.exception.ConflictError):
        sb.exec("echo", "too late")


@pytest.mark.timeout(120)
def test_timeout_and_idle_timeout_end_a_sandbox(app: modal.App, image: modal.Image) -> None:
    timed = modal.Sandbox.create("sleep", "600", app=app, image=image, timeout=2)
    idle = modal.Sandbox.create(app=app, image=image, idle_timeout=2)
    with pytest.raises(modal.exception.SandboxTimeoutError):
        timed.wait()
    assert timed.returncode == 124
    with pytest.raises(modal.exception.SandboxTimeoutError):
        idle.wait()


@pytest.mark.timeout(300)
def test_a_function_creates_and_drives_a_sandbox(kiln: KilnServer, app: modal.App) -> None:
    sandbox_app = importlib.import_module("sandbox_app")
    with sandbox_app.app.run():
        result = sandbox_app.sandbox_from_inside.remote("inside")
    assert result["exec"] == "INSIDE\n" and result["code"] == 0, result
    assert result["entrypoint"] == "through stdin\n" and result["returncode"] == 0, result
    assert result["listed"] is True, result


def test_block_network_leaves_only_the_sandboxs_own_loopback(app: modal.App, image: modal.Image) -> None:
    script = "import os; print(sorted(os.listdir('/sys/class/net')))"
    blocked = modal.Sandbox.create(app=app, image=image, block_network=True)
    connected = modal.Sandbox.create(app=app, image=image)
    try:
        assert blocked.exec("python", "-c", script).stdout.read() == "['lo']\n"
        assert connected.exec("python", "-c", script).stdout.read() == "['eth0', 'lo']\n"
        probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
        assert blocked.exec("python", "-c", probe).wait() != 0
    finally:
        blocked.terminate()
        connected.terminate()


_ESCAPES = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
def err(result):
    return "ok" if result == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
report = {}
os.makedirs("/tmp/m", exist_ok=True)
report["mount"] = err(libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None))
report["unshare"] = err(libc.unshare(0x10000000))
report["chroot"] = err(libc.chroot(b"/tmp"))
report["ptrace"] = err(libc.ptrace(16, 1, None, None))
report["host_paths"] = [p for p in sys.argv[2].split(",") if os.path.exists(p)]
def connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
report["kiln_port"] = connect(int(sys.argv[1]))
report["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
try:
    os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(int(sys.argv[3]), int(sys.argv[4])))
    report["mknod"] = "ok"
except OSError as exc:
    report["mknod"] = errno.errorcode.get(exc.errno or 0, "?")
os.makedirs("/tmp/cg", exist_ok=True)
report["cgroup"] = err(libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"pids"))
report["shadow_root"] = open("/etc/shadow").read().split("\n")[0]
report["uid"] = os.getuid()
print(json.dumps(report))
"""


def test_escapes_from_a_sandbox_fail(kiln: KilnServer, app: modal.App, image: modal.Image) -> None:
    marker = Path(f"/tmp/kiln-sandbox-marker-{uuid.uuid4().hex}")
    marker.write_text("host secret")
    kiln_port = urlparse(kiln.url).port
    host_paths = ",".join([str(marker), str(kiln.home), str(kiln.home / "credentials.json")])
    victim = modal.Sandbox.create("sh", "-c", "echo victim > /tmp/victim; sleep 600", app=app, image=image)
    attacker = modal.Sandbox.create(app=app, image=image)
    try:
        disk = os.stat("/").st_dev
        probe = attacker.exec(
            "python", "-c", _ESCAPES, str(kiln_port), host_paths, str(os.major(disk)), str(os.minor(disk))
        )
        output = probe.stdout.read()
        assert output, probe.stderr.read()
        report = json.loads(output)
        assert report["mount"] == report["unshare"] == report["ptrace"] == report["cgroup"] == "EPERM", report
        assert report["mknod"] == "EPERM", report  # no device node of the host's disk
        host_root = next(
            line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith("root:")
        )
        assert report["shadow_root"] != host_root and report["shadow_root"].startswith("root:"), report
        assert report["host_paths"] == [], report  # neither the host's files nor kiln's state
        assert report["kiln_port"] != "connected", report  # nothing of the host's loopback
        assert max(report["pids"]) < 20, report  # its own processes only, not the victim's
        assert report["uid"] == 0, report
        assert attacker.exec("cat", "/tmp/victim").wait() != 0  # the victim's files are its own
        # `rm -rf /` harms nothing outside the sandbox.
        attacker.exec("sh", "-c", "rm -rf --no-preserve-root / 2>/dev/null").wait()
        assert marker.read_text() == "host secret"
        assert victim.exec("cat", "/tmp/victim").stdout.read() == "victim\n"
        # Secrets of a sandbox and of an exec reach them, but no command line on the host.
        secret = f"kiln-sandbox-secret-{uuid.uuid4().hex}"
        holder = modal.Sandbox.create(
            "sh", "-c", "sleep 600", app=app, image=image, secrets=[modal.Secret.from_dict({"S1": secret})]
        )
        try:
            shown = holder.exec(
                "sh",
                "-c",
                "echo $S1 $S2; sleep 1",
                secrets=[modal.Secret.from_dict({"S2": secret + "-exec"})],
            )
            assert shown.stdout.read() == f"{secret} {secret}-exec\n"
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        assert secret.encode() not in (proc / "cmdline").read_bytes()
        finally:
            holder.terminate()
    finally:
        marker.unlink()
        victim.terminate()
        attacker.terminate()


@pytest.mark.timeout(300)
def test_a_sandbox_from_before_a_restart_says_why_it_is_gone(restartable_server: RestartableServer) -> None:
    created = run_client(
        restartable_server.server,
        "import modal; app = modal.App.lookup('kiln-test-restart', create_if_missing=True);"
        "sb = modal.Sandbox.create(app=app, image=modal.Image.debian_slim()); print(sb.object_id)",
        timeout=240,
    )
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.split()[-1]
    restartable_server.kill_9()
    restartable_server.restart()
    lookup = run_client(
        restartable_server.server,
        "import modal, sys; sb = modal.Sandbox.from_id(sys.argv[1]); print('rc', sb.poll()); sb.exec('echo', 'hi')",
        sandbox_id,
    )
    assert "rc 137" in lookup.stdout, lookup.stdout + lookup.stderr
    assert "this sandbox ended when the kiln server restarted" in lookup.stderr, lookup.stderr[-2000:]


@pytest.mark.timeout(300)
def test_files_move_in_and_out_through_the_filesystem_api(app: modal.App, tmp_path: Path) -> None:
    bare = modal.Image.from_registry("debian:bookworm")  # the tool is kiln's: no Python needed
    sb = modal.Sandbox.create(app=app, image=bare)
    try:
        fs = sb.filesystem
        fs.write_text("héllo\n", "/data/sub/hello.txt")
        assert fs.read_text("/data/sub/hello.txt") == "héllo\n"
        fs.write_bytes(bytes(range(256)), "/data/blob.bin")
        assert fs.read_bytes("/data/blob.bin") == bytes(range(256))
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20) * 40)  # 40 MiB each way, streamed
        fs.copy_from_local(big, "/data/big.bin")
        assert sb.exec("sh", "-c", "wc -c < /data/big.bin").stdout.read().strip() == str(40 << 20)
        fs.copy_to_local("/data/big.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
        fs.make_directory("/data/empty")
        names = {entry.name: entry for entry in fs.list_files("/data")}
        assert set(names) == {"sub", "blob.bin", "big.bin", "empty"}
        assert names["sub"].is_dir() and names["blob.bin"].size == 256 and names["blob.bin"].owner == "root"
        info = fs.stat("/data/sub/hello.txt")
        assert info.is_file() and info.size == len("héllo\n".encode())
        with pytest.raises(modal.exception.SandboxFilesystemNotFoundError):
            fs.read_text("/data/missing.txt")
        with pytest.raises(modal.exception.SandboxFilesystemDirectoryNotEmptyError):
            fs.remove("/data/sub")
        fs.remove("/data/sub", recursive=True)
        fs.remove("/data/blob.bin")
        assert {entry.name for entry in fs.list_files("/data")} == {"big.bin", "empty"}
        # The files are the sandbox's own: an exec sees them, as root of the sandbox.
        assert sb.exec("stat", "-c", "%U %s", "/data/big.bin").stdout.read() == f"root {40 << 20}\n"
    finally:
        sb.terminate()


@pytest.mark.timeout(120)
def test_a_tunnel_reaches_an_http_server_in_the_sandbox(
    kiln: KilnServer, app: modal.App, image: modal.Image
) -> None:
    sb = modal.Sandbox.create(
        "sh", "-c", "mkdir -p /srv && echo tunnel-ok > /srv/ok.txt && cd /srv && "
        "(python -m http.server 8001 &) && exec python -m http.server 8000",
        app=app, image=image, encrypted_ports=[8000], unencrypted_ports=[8001],
    )  # fmt: skip
    try:
        tunnel = sb.tunnels()[8000]
        assert tunnel.host == "127.0.0.1"  # this machine's loopback
        fetch = importlib.import_module("sandbox_tunnels").fetch_through_tunnels
        bodies = fetch(sb, str(kiln.home / "tls" / "bundle.pem"), 8000, 8001, "/ok.txt")  # kiln's CA
        assert bodies == ["tunnel-ok\n", "tunnel-ok\n"]
        assert tunnel.url.startswith("https://127.0.0.1:")
    finally:
        sb.terminate()


@pytest.mark.timeout(240)
def test_a_filesystem_snapshot_is_an_image_later_sandboxes_start_from(
    app: modal.App, image: modal.Image
) -> None:
    sb = modal.Sandbox.create(app=app, image=image)
    try:
        sb.exec("sh", "-c", "echo kept > /root/state.txt && rm /etc/hostname && mkdir -p /opt/new").wait()
        snapshot = sb.snapshot_filesystem()
        # Paused while its files were copied (nothing changes them under the copy), then resumed.
        assert sb.exec("echo", "alive").stdout.read() == "alive\n"
    finally:
        sb.terminate()
    later = modal.Sandbox.create(app=app, image=snapshot)
    try:
        assert later.exec("cat", "/root/state.txt").stdout.read() == "kept\n"
        assert later.exec("test", "-e", "/etc/hostname").wait() == 1  # a deletion is kept too
        assert later.exec("test", "-d", "/opt/new").wait() == 0
        assert later.exec("python", "-c", "print('still python')").stdout.read() == "still python\n"
    finally:
        later.terminate()


def _in_a_terminal(kiln: KilnServer, args: list[str], typed: bytes, timeout: float = 120) -> str:
    """`modal <args>` on a pseudo-terminal, as a user at a terminal runs it; `typed` is what the
    user types once the command has printed something. Returns everything it printed."""
    leader, follower = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "modal", *args], stdin=follower, stdout=follower, stderr=follower,
        env={**kiln.env, "TERM": "xterm"}, cwd=APPS, start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    sent = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the command exited and closed its side
                    break
                if not chunk:
                    break
                output += chunk
            if not sent and b"#" in output:  # the shell's prompt
                os.write(leader, typed)
                sent = True
            if process.poll() is not None and not ready:
                break
    finally:
        process.kill()
        process.wait()
        os.close(leader)
    return output.decode(errors="replace")


@pytest.mark.timeout(300)
def test_modal_shell_gives_an_interactive_shell_on_a_terminal(kiln: KilnServer) -> None:
    printed = _in_a_terminal(kiln, ["shell", "--cmd", "/bin/sh"], b"echo $((6 * 7)) $(tty); exit\n")
    assert re.search(r"42 /dev/pts/\d+", printed), printed[-3000:]


@pytest.mark.timeout(120)
def test_modal_container_exec_and_shell_reach_a_running_sandbox(
    kiln: KilnServer, app: modal.App, image: modal.Image
) -> None:
    sb = modal.Sandbox.create("sh", "-c", "echo from-entrypoint > /tmp/mark; sleep 600", app=app, image=image)
    try:
        task_id = sb._get_task_id()
        assert task_id.endswith("V")
        executed = run_modal(kiln, "container", "exec", "--no-pty", task_id, "cat", "/tmp/mark")
        assert executed.returncode == 0 and "from-entrypoint" in executed.stdout, executed.stderr[-2000:]
        shell = run_modal(kiln, "shell", "--no-pty", sb.object_id, "--cmd", "sh -c 'echo $((6 * 7))'")
        assert shell.returncode == 0 and "42" in shell.stdout, shell.stderr[-2000:]
    finally:
        sb.terminate()


def test_a_router_token_drives_its_own_sandbox_only(
    kiln: KilnServer, app: modal.App, image: modal.Image
) -> None:
    mine = modal.Sandbox.create(app=app, image=image)
    other = modal.Sandbox.create(app=app, image=image)
    my_task, other_task = mine._get_task_id(), other._get_task_id()

    async def attempts() -> list[object]:
        async with raw_stub(kiln) as stub:
            access = await stub.SandboxGetCommandRouterAccess(
                api_pb2.SandboxGetCommandRouterAccessRequest(sandbox_id=mine.object_id),
                metadata=kiln.metadata,
            )
            router = TaskCommandRouterStub(stub.SandboxGetCommandRouterAccess.channel)
            outcomes: list[object] = []
            for task_id, token in ((other_task, access.jwt), (my_task, "not-a-token")):
                request = sr_pb2.TaskExecStartRequest(
                    task_id=task_id, exec_id=str(uuid.uuid4()), command_args=["id"]
                )
                try:
                    await router.TaskExecStart(request, metadata={"authorization": f"Bearer {token}"})
                    outcomes.append("started")
                except GRPCError as exc:
                    outcomes.append(exc.status)
            request = sr_pb2.TaskExecStartRequest(
                task_id=my_task, exec_id=str(uuid.uuid4()), command_args=["true"]
            )
            await router.TaskExecStart(request, metadata={"authorization": f"Bearer {access.jwt}"})
            outcomes.append("own started")
            return outcomes

    try:
        assert asyncio.run(attempts()) == [Status.UNAUTHENTICATED, Status.UNAUTHENTICATED, "own started"]
    finally:
        mine.terminate()
        other.terminate()


@pytest.mark.timeout(300)
def test_a_function_reuses_pre_warmed_named_sandboxes(kiln: KilnServer, app: modal.App) -> None:
    sandbox_app = importlib.import_module("sandbox_app")
    with sandbox_app.app.run():
        pool = [
            modal.Sandbox.create(
                "sh",
                "-c",
                f"echo warm-{n} > /tmp/warm; sleep 600",
                app=sandbox_app.app,
                image=sandbox_app.image,
                name=f"warm-{n}",
            )
            for n in range(2)
        ]
        try:
            for sb in pool:  # each has written its file
                sb.exec("sh", "-c", "while [ ! -e /tmp/warm ]; do sleep 0.05; done").wait()
            results = list(sandbox_app.use_warm_sandbox.map(["warm-0", "warm-1"]))
        finally:
            for sb in pool:
                sb.terminate()
    assert results == ["warm-0\n", "warm-1\n"]


def test_a_fork_storm_and_a_memory_hog_stop_at_the_sandboxs_limits(
    app: modal.App, image: modal.Image
) -> None:
    stormy = modal.Sandbox.create(app=app, image=image)
    hungry = modal.Sandbox.create(app=app, image=image, memory=256)
    try:
        storm = (
            "import os, signal\nstarted = 0\ntry:\n    for _ in range(3000):\n        if os.fork() == 0:\n"
            "            os.close(1); os.close(2); signal.pause()\n        started += 1\n"
            "except OSError as exc:\n    print('stopped', started, exc.errno)\n"
        )
        stopped = stormy.exec("python", "-c", storm).stdout.read().split()
        assert stopped[:1] == ["stopped"] and 1000 < int(stopped[1]) < 2048, stopped  # kiln's pids limit
        hog = hungry.exec(
            "python", "-c", "blocks = [bytearray(1 << 20) for _ in range(1024)]; print('survived')"
        )
        assert hog.wait() != 0  # killed at 256 MiB, well before 1 GiB
        assert hungry.exec("echo", "still here").stdout.read() == "still here\n"
    finally:
        stormy.terminate()
        hungry.terminate()


def test_a_gpu_this_machine_lacks_is_refused_with_the_fix(app: modal.App, image: modal.Image) -> None:
    if detect_gpus():
        pytest.skip("this machine has a GPU: the refusal does not apply")
    with pytest.raises(modal.exception.Error, match=r"gpu='T4'.*KILN_GPU_FALLBACK=cpu"):
        modal.Sandbox.create(app=app, image=image, gpu="T4")


@pytest.mark.timeout(240)
def test_a_sandbox_ends_with_its_app(kiln: KilnServer, app: modal.App) -> None:
    sandbox_app = importlib.import_module("sandbox_app")
    with sandbox_app.app.run():
        sb = modal.Sandbox.create("sleep", "600", app=sandbox_app.app, image=sandbox_app.image)
        assert sb.poll() is None
    with pytest.raises(modal.exception.SandboxTerminatedError):
        sb.wait()
    assert sb.returncode == 137


@pytest.mark.timeout(120)
def test_wait_until_ready_follows_the_readiness_probe(app: modal.App, image: modal.Image) -> None:
    from modal.sandbox._sandbox import Probe

    # Its server listens only after its entrypoint has read a line: ready waits for that.
    tcp = modal.Sandbox.create(
        "sh", "-c", "read go; exec python -m http.server 8000", app=app, image=image,
        readiness_probe=Probe.with_tcp(8000, interval_ms=50),
    )  # fmt: skip
    marker = modal.Sandbox.create(
        app=app, image=image, readiness_probe=Probe.with_exec("test", "-e", "/tmp/ready", interval_ms=50)
    )
    try:
        with pytest.raises(modal.exception.TimeoutError):
            tcp.wait_until_ready(timeout=2)
        tcp.stdin.write(b"go\n")
        tcp.stdin.drain()
        tcp.wait_until_ready(timeout=60)
        marker.exec("touch", "/tmp/ready").wait()
        marker.wait_until_ready(timeout=60)
    finally:
        tcp.terminate()
        marker.terminate()


@pytest.mark.timeout(180)
def test_sandboxes_share_files_through_a_volume(app: modal.App, image: modal.Image) -> None:
    name = f"kiln-sandbox-vol-{uuid.uuid4().hex[:8]}"
    volume = modal.Volume.from_name(name, create_if_missing=True)
    writer = modal.Sandbox.create(app=app, image=image, volumes={"/data": volume})
    try:
        assert writer.exec("sh", "-c", "mkdir -p /data/out && echo shared > /data/out/f").wait() == 0
        writer.reload_volumes()
    finally:
        writer.terminate()
    reader = modal.Sandbox.create(app=app, image=image, volumes={"/mnt": volume})
    try:
        assert reader.exec("cat", "/mnt/out/f").stdout.read() == "shared\n"
    finally:
        reader.terminate()
    assert b"".join(volume.read_file("out/f")) == b"shared\n"
    modal.Volume.objects.delete(name)


def test_a_sandboxs_processes_and_execs_are_an_unprivileged_host_uid(
    app: modal.App, image: modal.Image
) -> None:
    entry, executed = str(600000 + os.getpid() % 1000), str(700000 + os.getpid() % 1000)
    sb = modal.Sandbox.create("sleep", entry, app=app, image=image)
    try:
        process = sb.exec("sh", "-c", f"sleep {executed} & echo started; wait")
        assert next(iter(process.stdout)) == "started\n"
        found: dict[str, str] = {}
        for _ in range(100):  # until the backgrounded sleep has exec'd
            found = {argv: uid for argv, uid in _sleeps() if argv in (entry, executed)}
            if len(found) == 2:
                break
            time.sleep(0.05)
        unprivileged = "Uid:\t100000\t100000\t100000\t100000"
        assert found == {entry: unprivileged, executed: unprivileged}
    finally:
        sb.terminate()


def _sleeps() -> list[tuple[str, str]]:
    """(argument, Uid line) of every `sleep` running on this machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, StopIteration):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0] == b"sleep":
                    status = (proc / "status").read_text().splitlines()
                    found.append((argv[1].decode(), next(x for x in status if x.startswith("Uid:"))))
    return found


@pytest.mark.timeout(120)
def test_the_filesystem_can_be_watched(app: modal.App, image: modal.Image) -> None:
    from modal.types import FileWatchEventType

    sb = modal.Sandbox.create(app=app, image=image)
    try:
        sb.filesystem.make_directory("/tmp/watched")
        sb.exec("sh", "-c", "sleep 1; echo x > /tmp/watched/new.txt")  # while the watch runs
        events = []
        for event in sb.filesystem.watch("/tmp/watched", filter=[FileWatchEventType.Create], timeout=30):
            events.append(event)
            break
        assert events and events[0].paths == ["/tmp/watched/new.txt"], events
    finally:
        sb.terminate()


def test_verbose_sandboxes_narrate_their_operations_in_the_app_and_container_logs(
    kiln: KilnServer, app: modal.App, image: modal.Image
) -> None:
    sb = modal.Sandbox.create(
        "sh", "-c", "echo kiln-entry-out; sleep 300", app=app, image=image, verbose=True
    )
    assert sb.exec("echo", "kiln-verbose-exec").stdout.read() == "kiln-verbose-exec\n"
    task_id = sb._get_task_id()
    sb.terminate()
    sb.wait(raise_on_termination=False)
    quiet = modal.Sandbox.create("sleep", "300", app=app, image=image)
    quiet.exec("echo", "kiln-quiet-exec").wait()
    quiet.terminate()
    logs = run_modal(kiln, "app", "logs", "kiln-test-sandboxes-local", "--tail", "1000").stdout
    assert f"[{sb.object_id}] created: sh -c 'echo kiln-entry-out; sleep 300'" in logs, logs
    assert f"[{sb.object_id}] exec: echo kiln-verbose-exec" in logs, logs
    assert f"[{sb.object_id}] ended: exit code" in logs, logs
    assert quiet.object_id not in logs and "kiln-quiet-exec" not in logs, logs
    # The sandbox is a container: its own logs are its entrypoint's output and its narration.
    own = run_modal(kiln, "container", "logs", task_id).stdout
    assert "kiln-entry-out" in own and f"[{sb.object_id}] ended" in own, own
    assert "kiln-quiet-exec" not in own


@pytest.mark.timeout(120)
def test_a_directory_snapshot_mounts_in_another_sandbox_at_another_path(
    app: modal.App, image: modal.Image
) -> None:
    marker = f"inside-{uuid.uuid4().hex[:8]}"
    assert not Path(f"/etc/{marker}").exists()
    first = modal.Sandbox.create(app=app, image=image)
    try:
        first.exec(
            "sh", "-c",
            "mkdir -p /user_project/sub && echo top > /user_project/a.txt && echo nested > /user_project/sub/b.txt"
            " && chmod 750 /user_project/sub && ln -s /etc /user_project/etc-link"
            f" && echo only-in-the-sandbox > /etc/{marker} && ln -s /etc /evil",
        ).wait()  # fmt: skip
        project = first.snapshot_directory("/user_project")
        # A link the sandbox planted leads where it leads inside it: its own /etc (which holds the
        # marker; the host's /etc does not), never the host's.
        evil = first.snapshot_directory("/evil")
        # No magic link leads out of the sandbox's view (here: to the copy's own descriptors).
        for magic in ("/proc/self/fd/0", "/proc/self/root/etc", "/proc/1/cwd"):
            with pytest.raises(modal.exception.InvalidError, match="cannot copy"):
                first.snapshot_directory(magic)
        with pytest.raises(modal.exception.InvalidError, match="snapshot_filesystem"):
            first.snapshot_directory("/")
        with pytest.raises(modal.exception.InvalidError, match="does not exist in the sandbox"):
            first.snapshot_directory("/nowhere")
        assert first.exec("echo", "alive").stdout.read() == "alive\n"  # resumed after each copy
    finally:
        first.terminate()
    second = modal.Sandbox.create(app=app, image=image)
    try:
        second.mount_image("/mnt/project", project)
        second.mount_image("/mnt/evil", evil)
        listing = second.exec(
            "sh", "-c",
            "cat /mnt/project/a.txt /mnt/project/sub/b.txt; readlink /mnt/project/etc-link;"
            f" stat -c %a /mnt/project/sub; cat /mnt/evil/{marker}",
        ).stdout.read()  # fmt: skip
        assert listing == "top\nnested\n/etc\n750\nonly-in-the-sandbox\n"
        assert second.filesystem.read_text("/mnt/project/sub/b.txt") == "nested\n"
        # Writable through an upper directory of this sandbox's own; the image itself is not changed.
        assert second.exec("sh", "-c", "echo new > /mnt/project/a.txt").wait() == 0
        second.mount_image("/mnt/again", project)
        assert second.exec("cat", "/mnt/project/a.txt", "/mnt/again/a.txt").stdout.read() == "new\ntop\n"
    finally:
        second.terminate()


@pytest.mark.timeout(120)
def test_a_mounted_image_replaces_a_directory_until_it_is_unmounted(
    app: modal.App, image: modal.Image
) -> None:
    built = image.build(app)
    sb = modal.Sandbox.create(app=app, image=image)
    other = modal.Sandbox.create(app=app, image=image)
    try:
        capabilities = sb.exec("grep", "^Cap", "/proc/self/status").stdout.read()
        sb.exec(
            "sh", "-c", "mkdir -p /opt/data && echo original > /opt/data/mine.txt && ln -s /etc /linked"
        ).wait()
        sb.mount_image("/opt/data", built)
        shown = "test -e /opt/data/mine.txt && echo mine; cat /opt/data/etc/debian_version >/dev/null && echo image"
        assert sb.exec("sh", "-c", shown).stdout.read() == "image\n"
        with pytest.raises(modal.exception.InvalidError, match="already mounted at /opt/data"):
            sb.mount_image("/opt/data/", built)
        sb.unmount_image("/opt/data")
        assert sb.exec("sh", "-c", shown).stdout.read() == "mine\n"

        # The sandbox's link leads to its own /etc: the empty image covers that, not the host's.
        sb.mount_image("/linked", modal.Image.from_scratch())
        assert (
            sb.exec("sh", "-c", "ls -A /etc | wc -l; test -L /linked && echo link").stdout.read()
            == "0\nlink\n"
        )
        assert Path("/etc/passwd").exists()
        sb.unmount_image("/linked")
        assert sb.exec("test", "-e", "/etc/passwd").wait() == 0

        sb.mount_image("/made/for/it", modal.Image.from_scratch())  # a missing mount point is made
        assert sb.exec("sh", "-c", "echo x > /made/for/it/f && cat /made/for/it/f").stdout.read() == "x\n"
        # The mount is the sandbox's alone: neither the host nor another sandbox sees it.
        assert " /made/for/it " not in Path("/proc/self/mountinfo").read_text()
        assert other.exec("sh", "-c", "test -e /made/for/it/f || echo absent").stdout.read() == "absent\n"
        # The sandbox gains no capability, and cannot undo or alter kiln's mount itself.
        assert sb.exec("grep", "^Cap", "/proc/self/status").stdout.read() == capabilities
        umount = "import ctypes; c = ctypes.CDLL(None, use_errno=True); print(c.umount2(b'/made/for/it', 2), ctypes.get_errno())"
        assert sb.exec("python", "-c", umount).stdout.read() == "-1 1\n"  # EPERM
        assert sb.exec("test", "-e", "/made/for/it/f").wait() == 0

        # A mount point the sandbox moved away and replaced by a link to another mount (its
        # /proc) is not what kiln mounted: kiln unmounts nothing else.
        sb.exec("sh", "-c", "mv /made /moved && mkdir -p /made/for && ln -s /proc /made/for/it").wait()
        with pytest.raises(modal.exception.InvalidError, match="no longer leads to the image kiln mounted"):
            sb.unmount_image("/made/for/it")
        assert sb.exec("sh", "-c", "test -e /proc/self/status && cat /moved/for/it/f").stdout.read() == "x\n"

        with pytest.raises(modal.exception.InvalidError, match="in the sandbox"):  # no magic link
            sb.mount_image("/proc/self/root/mnt", modal.Image.from_scratch())
        with pytest.raises(modal.exception.InvalidError, match="cannot replace the sandbox's root"):
            sb.mount_image("/", built)
        with pytest.raises(modal.exception.InvalidError, match=r"holds '\.\.'"):
            sb.mount_image("/opt/../etc", built)
        with pytest.raises(modal.exception.InvalidError, match="absolute"):
            sb.mount_image("opt/data", built)
        with pytest.raises(modal.exception.NotFoundError, match="no image is mounted at /opt/data"):
            sb.unmount_image("/opt/data")
    finally:
        sb.terminate()
        other.terminate()
