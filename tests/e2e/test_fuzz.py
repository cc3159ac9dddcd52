"""No request can stall the server: random bytes and mutated messages to every implemented RPC,
each followed by a cheap call (ClientHello) that must be answered within 100 ms."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpclib.const
import pytest
from google.protobuf import empty_pb2, symbol_database
from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientStub

from tests.conftest import KilnServer, RestartableServer

# A request the server refuses before reading it all leaves the client's unsent bytes in its
# transport, which then never finishes closing; such transports are collected at the end of each
# test here (see `_collect_refused_connections`) instead of warning in whichever test runs next.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::ResourceWarning")]

SERVICE = api_pb2.DESCRIPTOR.services_by_name["ModalClient"]


@pytest.fixture(autouse=True)
def _collect_refused_connections() -> Iterator[None]:
    yield
    gc.collect()


PROMPT = 0.1  # seconds: the cheap call's budget after each fuzzed request
CALL_TIMEOUT = 0.5  # long polls and streams are cut here; the server must not care


class _RawCodec(CodecBase):
    """Sends bytes as they are and hands replies back undecoded."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


def _address(server: KilnServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _random_scalar(field: Any, rng: random.Random) -> Any:
    kind = field.type
    if kind == field.TYPE_STRING:
        size = rng.choice([0, 1, 8, 25, 65, 1000, 100_000, 300_000])
        return "".join(rng.choice("ap-fu-xyzé/\\\n\0%…") for _ in range(min(size, 100))) * max(1, size // 100)
    if kind == field.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 5, 1000, 100_000]))
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e308, float("inf"), float("nan"), 0.001])
    if kind == field.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    if kind in (field.TYPE_UINT32, field.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if kind in (field.TYPE_UINT64, field.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if kind in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32):
        return rng.choice([0, 1, -1, 2**31 - 1, -(2**31)])
    return rng.choice([0, 1, -1, 2**63 - 1, -(2**63)])


def mutated(message_type: type[Message], rng: random.Random, ids: dict[str, str], depth: int = 0) -> Message:
    """A message of `message_type` with random fields set to edge values (nested one level); an
    ID field is often a real object's (`ids`, by field name), so handlers get past their lookups."""
    message = message_type()
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    for field in fields:
        if rng.random() < 0.4:
            continue
        if field.type == field.TYPE_MESSAGE:
            if depth >= 1 or field.message_type.GetOptions().map_entry:
                continue
            sub = mutated(
                symbol_database.Default().GetSymbol(field.message_type.full_name), rng, ids, depth + 1
            )
            if field.is_repeated:
                getattr(message, field.name).add().CopyFrom(sub)
            else:
                getattr(message, field.name).CopyFrom(sub)
        elif field.is_repeated:
            getattr(message, field.name).extend(_random_scalar(field, rng) for _ in range(rng.choice([1, 3])))
        elif field.name in ids and rng.random() < 0.7:
            setattr(message, field.name, ids[field.name])
        else:
            setattr(message, field.name, _random_scalar(field, rng))
    return message


def flipped(data: bytes, rng: random.Random) -> bytes:
    """A valid encoding with a few bytes changed."""
    if not data:
        return rng.randbytes(3)
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 5])):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def random_bytes(rng: random.Random) -> bytes:
    size = rng.choice([1, 7, 64, 4096, 200_000])
    data = rng.randbytes(size)
    if rng.random() < 0.3:  # a valid-looking field header followed by a huge length
        data = b"\x0a\xff\xff\xff\xff\x0f" + data
    return data


async def _call(channel: Channel, method: Any, payload: bytes, metadata: dict[str, str]) -> None:
    try:
        await _call_strict(channel, method, payload, metadata)
    except (GRPCError, StreamTerminatedError):
        pass


async def _replies(stream: Any) -> AsyncIterator[Any]:
    while (reply := await stream.recv_message()) is not None:
        yield reply


async def _hello_seconds(stub: ModalClientStub, metadata: dict[str, str]) -> float:
    started = time.perf_counter()
    await stub.ClientHello(empty_pb2.Empty(), metadata=metadata, timeout=10)
    return time.perf_counter() - started


async def _prompt(stub: ModalClientStub, metadata: dict[str, str]) -> float:
    """The cheap call's time. A busy test machine can delay one call past the budget; a stalled
    server delays every call, so a slow answer is asked again once before it counts."""
    first = await _hello_seconds(stub, metadata)
    return first if first <= PROMPT else await _hello_seconds(stub, metadata)


async def _implemented(channel: Channel, metadata: dict[str, str]) -> list[Any]:
    methods = []
    for method in SERVICE.methods:
        try:
            await _call_strict(channel, method, b"", metadata)
        except GRPCError as exc:
            if exc.status == Status.UNIMPLEMENTED and "does not implement" in (exc.message or ""):
                continue
        methods.append(method)
    return methods


async def _call_strict(channel: Channel, method: Any, payload: bytes, metadata: dict[str, str]) -> None:
    cardinality = (
        grpclib.const.Cardinality.UNARY_STREAM
        if method.server_streaming
        else grpclib.const.Cardinality.UNARY_UNARY
    )
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        async with channel.request(
            path, cardinality, bytes, bytes, timeout=CALL_TIMEOUT, metadata=metadata
        ) as stream:
            await stream.send_message(payload, end=True)
            async for _ in _replies(stream):
                pass
    except asyncio.TimeoutError:
        pass


@pytest.mark.timeout(180)
def test_random_and_mutated_requests_to_every_rpc_never_stall_the_server(
    restartable_server: RestartableServer,
) -> None:
    server = restartable_server.server
    host, port = _address(server)
    rng = random.Random(8)
    slow: list[tuple[str, str, float]] = []

    async def fuzz() -> int:
        fuzz_channel = Channel(host, port, codec=_RawCodec())
        hello_channel = Channel(host, port)
        stub = ModalClientStub(hello_channel)
        sent = 0
        try:
            methods = await _implemented(fuzz_channel, server.metadata)
            app = await stub.AppCreate(
                api_pb2.AppCreateRequest(description="fuzz", environment_name="main"),
                metadata=server.metadata,
            )
            ids = {"app_id": app.app_id, "environment_name": "main"}
            assert len(methods) > 40, [m.name for m in methods]
            started = time.monotonic()
            for method in methods:
                message_type = symbol_database.Default().GetSymbol(method.input_type.full_name)
                cases: list[tuple[str, bytes]] = [("random", random_bytes(rng)) for _ in range(5)]
                valid = [mutated(message_type, rng, ids).SerializeToString() for _ in range(40)]
                cases += [("mutated", data) for data in valid]
                cases += [("flipped", flipped(data, rng)) for data in valid[:5]]
                for kind, payload in cases:
                    await _call(fuzz_channel, method, payload, server.metadata)
                    sent += 1
                    try:
                        seconds = await _prompt(stub, server.metadata)
                    except asyncio.TimeoutError:
                        raise AssertionError(
                            f"the server did not answer ClientHello in 10 s after {kind} {method.name}"
                        ) from None
                    if seconds > PROMPT:
                        slow.append((method.name, kind, seconds))
            assert time.monotonic() - started < 90
        finally:
            fuzz_channel.close()
            hello_channel.close()
        return sent

    sent = asyncio.run(fuzz())
    assert not slow, f"the server answered ClientHello late after: {slow}"
    assert restartable_server.alive()
    log = server.log()
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not errors, "\n".join(line[:300] for line in log.splitlines()[-60:])
    print(f"\nfuzz: {sent} requests, the server answered every cheap call in time")


@pytest.mark.timeout(60)
def test_a_huge_id_is_refused_at_once_without_echoing_it(kiln: KilnServer) -> None:
    host, port = _address(kiln)

    async def go() -> tuple[GRPCError, float]:
        channel = Channel(host, port)
        stub = ModalClientStub(channel)
        try:
            started = time.perf_counter()
            with pytest.raises(GRPCError) as caught:
                await stub.FunctionMap(
                    api_pb2.FunctionMapRequest(function_id="fu-" + "x" * 300_000), metadata=kiln.metadata
                )
            return caught.value, time.perf_counter() - started
        finally:
            channel.close()

    error, seconds = asyncio.run(go())
    assert error.status == Status.INVALID_ARGUMENT, error
    assert len(error.message or "") < 200 and "function_id" in (error.message or ""), error.message
    assert seconds < 1.0


@pytest.mark.timeout(60)
def test_an_oversized_or_undecodable_request_is_refused_clearly(kiln: KilnServer) -> None:
    host, port = _address(kiln)
    method = SERVICE.methods_by_name["AppList"]

    async def go(payload: bytes) -> GRPCError:
        channel = Channel(host, port, codec=_RawCodec())
        try:
            with pytest.raises(GRPCError) as caught:
                await _call_strict(channel, method, payload, kiln.metadata)
            return caught.value
        finally:
            channel.close()

    garbage = asyncio.run(go(b"\xff\xff\xff\xff"))
    assert garbage.status == Status.INVALID_ARGUMENT, garbage
    assert "not a valid modal.client.AppListRequest" in (garbage.message or ""), garbage.message
    oversized = asyncio.run(go(b"\x0a" + b"\x80\x80\x80\x40" + b"x" * (65 * 2**20)))
    assert oversized.status == Status.RESOURCE_EXHAUSTED, oversized
    assert "KILN_MAX_MESSAGE_MB" in (oversized.message or "")
    assert "Traceback" not in kiln.log()
