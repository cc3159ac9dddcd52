"""Chaos: containers SIGKILLed at random while thousands of inputs with retries run. Every result
must arrive exactly once (checked on the wire) and in order (checked through the client's map)."""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import re
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientStub

from tests.conftest import APPS, TEST_HOME, KilnServer, start_server, stop_server
from tests.e2e.test_server import descendants

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 2000


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A server of our own: every sandbox below its pid is one of this test's containers."""
    server = start_server(TEST_HOME, tmp_path_factory.mktemp("chaos") / "server.log")
    yield server
    stop_server(server)


@pytest.fixture
def chaos_app(own_server: KilnServer, monkeypatch: pytest.MonkeyPatch) -> object:
    for key in ("MODAL_SERVER_URL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH"):
        monkeypatch.setenv(key, own_server.env[key])
    monkeypatch.syspath_prepend(str(APPS))
    return importlib.import_module("chaos_app")


def containers(server: KilnServer) -> list[int]:
    """The outermost sandbox process of each running container."""
    below = descendants(server.process.pid)
    parents = {pid: _parent(pid) for pid in below}
    return [pid for pid, name in below.items() if name == "bwrap" and below.get(parents[pid]) != "bwrap"]


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[1])


class Killer(threading.Thread):
    """SIGKILLs a random container every 0.5 to 1.5 s until stopped."""

    def __init__(self, server: KilnServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stopping = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stopping.wait(random.uniform(0.5, 1.5)):
            running = containers(self.server)
            if running:
                try:
                    os.kill(random.choice(running), signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass

    def __enter__(self) -> Killer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()


async def map_on_the_wire(
    server: KilnServer, function_id: str, n: int
) -> dict[int, list[api_pb2.FunctionGetOutputsItem]]:
    """A map through the raw protocol, keeping every output the server sends (the client would
    silently drop duplicates)."""
    from modal._serialization import serialize

    host, port = re.fullmatch(r"http://([^:]+):(\d+)", server.url).groups()  # type: ignore[union-attr]
    channel = Channel(host, int(port))
    stub = ModalClientStub(channel)
    try:
        call = await stub.FunctionMap(
            api_pb2.FunctionMapRequest(
                function_id=function_id,
                function_call_type=api_pb2.FUNCTION_CALL_TYPE_MAP,
                function_call_invocation_type=api_pb2.FUNCTION_CALL_INVOCATION_TYPE_SYNC,
            ),
            metadata=server.metadata,
        )
        for first in range(0, n, 49):
            items = [
                api_pb2.FunctionPutInputsItem(
                    idx=i,
                    input=api_pb2.FunctionInput(
                        args=serialize(((i,), {})), data_format=api_pb2.DATA_FORMAT_PICKLE
                    ),
                )
                for i in range(first, min(n, first + 49))
            ]
            await stub.FunctionPutInputs(
                api_pb2.FunctionPutInputsRequest(
                    function_id=function_id, function_call_id=call.function_call_id, inputs=items
                ),
                metadata=server.metadata,
            )
        outputs: dict[int, list[api_pb2.FunctionGetOutputsItem]] = defaultdict(list)
        cursor = "0-0"
        while True:
            response = await stub.FunctionGetOutputs(
                api_pb2.FunctionGetOutputsRequest(
                    function_call_id=call.function_call_id, timeout=5, last_entry_id=cursor
                ),
                metadata=server.metadata,
            )
            cursor = response.last_entry_id
            for output in response.outputs:
                outputs[output.idx].append(output)
            if response.num_unfinished_inputs == 0 and not response.outputs:
                return outputs
    finally:
        channel.close()


@pytest.mark.timeout(600)
def test_every_result_arrives_exactly_once_while_containers_are_killed(
    chaos_app: object, own_server: KilnServer
) -> None:
    import modal
    from modal._serialization import deserialize

    work = chaos_app.work  # type: ignore[attr-defined]
    # A client of its own: the process may already hold one for the session's shared server.
    client = modal.Client.from_credentials(own_server.token_id, own_server.token_secret)
    with client, chaos_app.app.run(client=client):  # type: ignore[attr-defined]
        work.remote(0)  # build and start before the chaos
        with Killer(own_server) as wire_killer:
            outputs = asyncio.run(map_on_the_wire(own_server, work.object_id, N))
        with Killer(own_server) as map_killer:
            mapped = list(work.map(range(N)))

    assert sorted(outputs) == list(range(N)), f"missing: {sorted(set(range(N)) - set(outputs))[:20]}"
    duplicated = {idx: len(items) for idx, items in outputs.items() if len(items) > 1}
    assert not duplicated, f"delivered more than once: {duplicated}"
    results = {idx: items[0].result for idx, items in outputs.items()}
    failed = {
        idx: r.exception
        for idx, r in results.items()
        if r.status != api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
    }
    assert not failed, f"failed despite retries: {dict(list(failed.items())[:5])}"
    values = {idx: deserialize(r.data, None)[0] for idx, r in results.items()}
    assert values == {i: i * i for i in range(N)}

    assert [value for value, _ in mapped] == [i * i for i in range(N)]

    retries = own_server.log().count(" retry ")
    tasks = {task for _, task in mapped} | {deserialize(r.data, None)[1] for r in results.values()}
    print(
        f"\nchaos: {2 * N} inputs, {wire_killer.kills + map_killer.kills} containers SIGKILLed, "
        f"{len(tasks)} containers ran inputs, {retries} retries, 0 lost, 0 duplicated"
    )
    assert wire_killer.kills and map_killer.kills, "the test killed no container"
