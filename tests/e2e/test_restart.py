"""A durable control plane: `kill -9` the server, restart it on the same KILN_HOME and port, and
deployed apps, spawned calls, a running map, ephemeral apps, containers and logs carry on.

Each test has a server of its own (`restartable_server`): it kills it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import APPS, KilnServer, RestartableServer, run_client, run_modal

pytestmark = pytest.mark.e2e

DURABLE_APP = "kiln-test-durable"  # the name durable_app.py gives its app (for `modal run`)

CALL = """
import json, sys
import modal

app, function, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    result = modal.Function.from_name(app, function).remote(*args)
except Exception as exc:
    print("error=" + json.dumps(f"{type(exc).__name__}: {exc}"))
else:
    print("result=" + json.dumps(result))
"""


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def deploy(server: RestartableServer, name: str, app_file: str = "durable_app.py") -> None:
    result = run_modal(server.server, "deploy", "--name", name, app_file, timeout=300)
    assert result.returncode == 0, output(result)


def _call(server: RestartableServer, app: str, function: str, *args: Any) -> tuple[str, Any]:
    result = run_client(server.server, CALL, app, function, json.dumps(args))
    assert result.returncode == 0, output(result)
    for line in result.stdout.splitlines():
        kind, sep, value = line.partition("=")
        if sep and kind in ("result", "error"):
            return kind, json.loads(value)
    raise AssertionError(f"the client printed no result:\n{output(result)}")


def call(server: RestartableServer, app: str, function: str, *args: Any) -> Any:
    """`modal.Function.from_name(app, function).remote(*args)` from a client process of its own."""
    kind, value = _call(server, app, function, *args)
    assert kind == "result", f"{function}{args} failed: {value}\n{server.log()[-4000:]}"
    return value


def call_error(server: RestartableServer, app: str, function: str, *args: Any) -> str:
    """The error (`Type: message`) that calling `app.function(*args)` raises in the client."""
    kind, value = _call(server, app, function, *args)
    assert kind == "error", f"{function}{args} should have failed, it returned {value!r}"
    return str(value)


def listing(server: RestartableServer, *args: str) -> list[dict[str, Any]]:
    """The rows of a `modal … list --json`."""
    result = run_modal(server.server, *args, "--json", timeout=60)
    assert result.returncode == 0, output(result)
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def app_states(server: RestartableServer, name: str) -> list[str]:
    """The state of each app named `name` in `modal app list`."""
    return [row["state"] for row in listing(server, "app", "list") if row["description"] == name]


def containers(server: RestartableServer) -> dict[str, str]:
    """`modal container list`: container id → app name."""
    return {row["container_id"]: row["app_name"] for row in listing(server, "container", "list")}


def modal_output(server: RestartableServer, *args: str, timeout: float = 30) -> str:
    """What `modal <args>` prints within `timeout` seconds; a command that streams (as `… logs -f`
    does) is stopped then, and what it printed so far is its output."""
    try:
        result = run_modal(server.server, *args, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return _text(exc.stdout) + _text(exc.stderr)
    return output(result)


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` holds; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


class Client:
    """A client process in the background (`python -m modal run …`, or a script with `-c`), its
    output collected line by line as it comes."""

    def __init__(self, server: KilnServer, *argv: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=APPS,
            env={**server.env, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None or self._reader.is_alive(), (
                f"the client exited ({self.process.returncode}) before printing {text!r}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"no {text!r} within {timeout:.0f} s:\n{self.output}"
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the client still runs after {timeout:.0f} s:\n{self.output}") from None
        self._reader.join(5)
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.mark.timeout(240)
def test_a_deployed_app_serves_again_after_kill_9_and_a_restart_with_no_redeploy(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    name = "kiln-test-durable-deployed"
    deploy(server, name)
    assert call(server, name, "triple", 7) == 21
    assert app_states(server, name) == ["deployed"]

    leftovers = server.kill_9()
    assert not leftovers, f"processes of the killed server outlived it: {leftovers}"

    restarted_at = time.monotonic()
    server.restart()
    ready = time.monotonic() - restarted_at
    assert call(server, name, "triple", 8) == 24
    answered = time.monotonic() - restarted_at
    print(
        f"\nrestart: server ready {ready:.2f} s after the restart began, first call answered "
        f"{answered:.2f} s after (a client process of its own and a cold container included)"
    )
    assert app_states(server, name) == ["deployed"]


SPAWN = """
import sys
import modal

slow_double = modal.Function.from_name(sys.argv[1], "slow_double")
slow_double.remote(0, 0.0)  # a warm container: the spawned call starts at once
call = slow_double.spawn(21, float(sys.argv[2]))
print(f"call={call.object_id}")
"""

GET = """
import sys
import modal

call = modal.FunctionCall.from_id(sys.argv[1])
print(f"first={call.get(timeout=float(sys.argv[2]))!r}")
print(f"again={call.get(timeout=10)!r}")
"""


@pytest.mark.timeout(240)
def test_a_call_spawned_before_kill_9_delivers_its_result_after_the_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    name = "kiln-test-durable-spawn"
    deploy(server, name)
    spawned = run_client(server.server, SPAWN, name, "8")
    assert spawned.returncode == 0, output(spawned)
    call_id = spawned.stdout.split("call=")[1].split()[0]
    assert call_id.startswith("fc-"), spawned.stdout

    time.sleep(1.5)  # the call is running in its container (it sleeps 8 s) when the server dies
    server.kill_9()
    server.restart()

    started = time.monotonic()
    got = run_client(server.server, GET, call_id, "90")
    assert got.returncode == 0, output(got) + server.log()[-4000:]
    # A spawned call's result is kept: a second get() returns it again.
    assert "first=42" in got.stdout and "again=42" in got.stdout, output(got)
    print(f"\nspawned call answered {time.monotonic() - started:.2f} s after the restart")


def digest(values: list[int]) -> str:
    """As durable_app.digest."""
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


N, DELAY = 1000, 0.1  # one container running 10 inputs at a time: ~10 s of map

CRUNCH = """
import sys
import durable_app

with durable_app.app.run():
    durable_app.crunch(n=int(sys.argv[1]), delay=float(sys.argv[2]))
"""


def crunch_through_a_restart(
    server: RestartableServer, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, Client, float]:
    """Start a client running durable_app's `crunch` map, kill -9 the server when 300 results are
    in, restart it at once; the client's exit status, its output, and how long the server was gone.

    How long the official client (1.6.4) rides out a dead server:
    - FunctionGetOutputs (the map's output poll) retries 20 times, waiting 0.1, 0.2, 0.4, 0.8 s and
      then 1 s between attempts (Retry(max_retries=20), max_delay 1 s): ~17.5 s, as a refused
      connection fails at once. Then the map raises ConnectionError.
    - FunctionPutInputs and FunctionRetryInputs retry forever (max_retries=None, up to 15 s apart).
    - AppHeartbeat retries 3 times (~0.7 s), but a failed heartbeat is only logged; the next one
      goes 15 s later.
    - The gRPC channel reconnects by itself on the next call after its connection drops.
    So a server back on the same port well within ~15 s sees the map through.
    """
    client = Client(server.server, *argv, env=env)
    try:
        client.wait_for_line("progress 300", timeout=120)
        killed_at = time.monotonic()
        server.kill_9()
        server.restart()
        back = time.monotonic() - killed_at
        assert back < 10, f"the restart took {back:.1f} s: too close to the client's ~17 s of retries"
        returncode = client.wait(timeout=180)
    finally:
        client.kill()
    expected = [x * x for x in range(N)]
    summary = f"crunch: count={N} sum={sum(expected)} digest={digest(expected)}"
    assert summary in client.lines, client.output + "\n" + server.log()[-4000:]
    progress = [int(line.split()[1]) for line in client.lines if line.startswith("progress ")]
    assert progress == list(range(100, N + 1, 100)), client.output
    return returncode, client, back


@pytest.mark.timeout(300)
def test_a_map_in_flight_through_the_python_api_survives_kill_9_and_a_quick_restart_with_each_result_once_in_order(
    restartable_server: RestartableServer,
) -> None:
    """Through the client's Python API (`with app.run(): f.map(…)`): every result arrives exactly
    once and in order, and the client exits cleanly. (See crunch_through_a_restart for how long
    the client retries.)

    The client drops duplicate outputs silently, so "exactly once" is checked on the wire too: its
    debug log's last "Map stats" line counts the outputs it received and the duplicates it dropped.
    """
    server = restartable_server
    returncode, client, back = crunch_through_a_restart(
        server, "-c", CRUNCH, str(N), str(DELAY), env={"MODAL_LOGLEVEL": "DEBUG"}
    )
    assert returncode == 0, client.output[-8000:] + "\n" + server.log()[-4000:]
    stats = [line for line in client.lines if "Map stats:" in line]
    assert stats, client.output[-8000:]
    counts = dict(re.findall(r"(\w+)=(\w+)", stats[-1].split("Map stats:")[1]))
    assert counts["outputs_received"] == str(N), stats[-1]
    assert counts["successful_completions"] == str(N), stats[-1]
    duplicates = {k: v for k, v in counts.items() if k.endswith("duplicates") and v != "0"}
    assert not duplicates, f"the server delivered outputs twice: {stats[-1]}"
    print(
        f"\nmap (Python API): server back {back:.2f} s after kill -9; client's {stats[-1].split('Map ')[1]}"
    )


@pytest.mark.timeout(300)
def test_modal_run_of_a_map_rides_out_kill_9_under_a_supervisor_that_keeps_the_sockets(
    supervised_server: RestartableServer,
) -> None:
    """`modal run` of the same map, with the server's listening sockets held by a supervisor (as
    systemd socket activation does; `kiln server` takes them from LISTEN_FDS): every result once,
    in order, and exit 0.

    Without such a supervisor the results still all arrive, but `modal run` then exits 1 with
    `Connect call failed`: besides the map it streams the app's logs (modal/_output/pty.py
    get_app_logs_loop), and when the server dies that loop reconnects at once, with no back-off,
    and does not retry a refused connection; modal/runner.py re-raises its error when the app
    ends. No restart can come before that immediate reconnect. With the sockets held, the
    reconnection waits in the backlog until the new server accepts it.
    """
    server = supervised_server
    returncode, client, back = crunch_through_a_restart(
        server, "-m", "modal", "run", "durable_app.py::crunch", "--n", str(N), "--delay", str(DELAY)
    )
    assert returncode == 0, client.output[-8000:] + "\n" + server.log()[-4000:]
    print(f"\nmap (modal run, sockets held): server back {back:.2f} s after kill -9; exit 0")


@pytest.mark.timeout(240)
def test_an_ephemeral_app_whose_client_is_gone_is_stopped_after_the_heartbeat_grace_on_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    client = Client(server.server, "-m", "modal", "run", "durable_app.py::linger")
    try:
        client.wait_for_line("lingering 42", timeout=120)
        assert app_states(server, DURABLE_APP) == ["ephemeral"]
    finally:
        client.kill()
    server.kill_9()
    restarted_at = time.monotonic()
    server.restart(extra_env={"KILN_HEARTBEAT_GRACE": "3"})

    def stopped() -> bool:
        states = app_states(server, DURABLE_APP)
        assert states, "the restarted server lost the ephemeral app (it should list it, stopped)"
        return states == ["stopped"]

    eventually(stopped, 20, "the app of the dead client stopped")
    print(f"\nephemeral app stopped {time.monotonic() - restarted_at:.2f} s after the restart (grace 3 s)")


@pytest.mark.timeout(300)
def test_containers_and_logs_from_the_cli_before_and_after_a_restart(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server
    name = "kiln-test-durable-logs"
    deploy(server, name)

    first = call(server, name, "shout", "before")
    assert containers(server).get(first) == name, containers(server)
    assert "KILN-DURABLE-before" in modal_output(server, "container", "logs", first)
    assert "KILN-DURABLE-before" in modal_output(server, "app", "logs", name)
    stopped = run_modal(server.server, "container", "stop", first, "--yes", timeout=60)
    assert stopped.returncode == 0, output(stopped)
    eventually(lambda: first not in containers(server), 15, f"{first} gone from `modal container list`")

    second = call(server, name, "shout", "second")
    assert second != first, "a stopped container served another call"
    server.kill_9()
    server.restart()

    # The container died with the server; what it printed did not.
    eventually(lambda: second not in containers(server), 10, f"dead {second} gone from the list")
    logs = modal_output(server, "app", "logs", name)
    assert "KILN-DURABLE-before" in logs and "KILN-DURABLE-second" in logs, logs
    assert "KILN-DURABLE-second" in modal_output(server, "container", "logs", second)

    third = call(server, name, "shout", "after")
    assert containers(server).get(third) == name, containers(server)
    assert "KILN-DURABLE-after" in modal_output(server, "container", "logs", third)
    assert "KILN-DURABLE-after" in modal_output(server, "app", "logs", name)
    stopped = run_modal(server.server, "container", "stop", third, "--yes", timeout=60)
    assert stopped.returncode == 0, output(stopped)
    eventually(lambda: third not in containers(server), 15, f"{third} gone from `modal container list`")
