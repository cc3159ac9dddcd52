"""Maps every RPC of the Modal service onto kiln's handlers.

Handlers are plain coroutines `(request, ctx) -> response` (or async iterators of responses for
server-streaming RPCs) on the handler classes. An RPC no handler implements answers UNIMPLEMENTED
with its name, so a client using a feature kiln lacks gets one clear error, never a hang.
KilnErrors become the status codes the client maps to its own exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import grpclib.server
from google.protobuf import symbol_database
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.exceptions import StreamClosedError
from modal_proto import api_pb2

from kiln import errors

log = logging.getLogger("kiln.modal")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
# An error message travels in a gRPC header, whose encoding is slow for long values: a 300 KB
# message blocked the loop for seconds. Messages name the fix in far less.
MAX_ERROR_MESSAGE = 4000
MAX_ID_LENGTH = 64  # kiln's IDs are 25 characters; Modal's are shorter than this too
MAX_NAME_LENGTH = 256  # the client allows 64 for object, app and environment names


SERVICE = api_pb2.DESCRIPTOR.services_by_name["ModalClient"]
_STATUS_OF = {
    errors.InvalidRequest: GrpcStatus.INVALID_ARGUMENT,
    errors.NotFound: GrpcStatus.NOT_FOUND,
    errors.LimitExceeded: GrpcStatus.RESOURCE_EXHAUSTED,
    errors.Unsupported: GrpcStatus.UNIMPLEMENTED,
    errors.ImageBuildError: GrpcStatus.FAILED_PRECONDITION,
    errors.ContainerStartError: GrpcStatus.FAILED_PRECONDITION,
    errors.SandboxUnavailable: GrpcStatus.FAILED_PRECONDITION,
    errors.ServerUnavailable: GrpcStatus.FAILED_PRECONDITION,
}


class AlreadyExists(errors.InvalidRequest):
    """Maps to ALREADY_EXISTS (the client raises AlreadyExistsError)."""


class TooLarge(errors.InvalidRequest):
    """Maps to RESOURCE_EXHAUSTED: a payload over one of the server's limits."""


_STATUS_OF[AlreadyExists] = GrpcStatus.ALREADY_EXISTS
_STATUS_OF[TooLarge] = GrpcStatus.RESOURCE_EXHAUSTED


@dataclass
class CallContext:
    """Who is calling: a user's client, or the container running `task_id`."""

    metadata: dict[str, str] = field(default_factory=dict)
    task_id: str = ""


# Sees a decoded request (RPC name, request, caller) before its handler; raises GRPCError to refuse.
Guard = Callable[[str, Any, CallContext], None]


def _message_class(descriptor: Any) -> Any:
    return symbol_database.Default().GetSymbol(descriptor.full_name)


def build_mapping(
    handlers: list[object],
    ctx_factory: Callable[[grpclib.server.Stream[Any, Any]], CallContext],
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    guard: Guard | None = None,
    service: Any = SERVICE,
) -> dict[str, grpclib.const.Handler]:
    """The grpclib mapping for every method of `service` (a protobuf service descriptor; the
    Modal client's by default), served by `handlers`. `ctx_factory` says who calls (and refuses
    a caller with a GRPCError before anything is read); `guard`, if any, sees each decoded
    request before its handler and may refuse it."""
    mapping = {}
    for method in _methods(service):
        impl = next((i for i in (getattr(h, method.name, None) for h in handlers) if i is not None), None)
        mapping[method.path] = grpclib.const.Handler(
            _wrap(method, impl, ctx_factory, max_message_bytes, guard),
            method.cardinality,
            method.request,
            method.response,
        )
    return mapping


@dataclass(frozen=True)
class _Method:
    name: str
    path: str
    cardinality: grpclib.const.Cardinality
    request: Any
    response: Any
    server_streaming: bool


@functools.cache
def _methods(service: Any) -> tuple[_Method, ...]:
    """A service's methods, read from its descriptor once (each container's socket reuses them)."""
    cardinalities = {
        (False, False): grpclib.const.Cardinality.UNARY_UNARY,
        (False, True): grpclib.const.Cardinality.UNARY_STREAM,
        (True, False): grpclib.const.Cardinality.STREAM_UNARY,
        (True, True): grpclib.const.Cardinality.STREAM_STREAM,
    }
    return tuple(
        _Method(
            method.name,
            f"/{service.full_name}/{method.name}",
            cardinalities[(method.client_streaming, method.server_streaming)],
            _message_class(method.input_type),
            _message_class(method.output_type),
            method.server_streaming,
        )
        for method in service.methods
    )


def _wrap(
    method: _Method,
    impl: Any,
    ctx_factory: Callable[[Any], CallContext],
    max_message_bytes: int,
    guard: Guard | None,
) -> Any:
    name = method.name

    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        ctx = ctx_factory(stream)
        if impl is None:
            raise GRPCError(
                GrpcStatus.UNIMPLEMENTED,
                f"kiln does not implement {name} yet, so the client feature that uses it is not available "
                "on this server.",
            )
        request = await receive(stream, method.request, name, max_message_bytes)
        if guard is not None:
            guard(name, request, ctx)
        with translated_errors(name):
            if method.server_streaming:
                responses: AsyncIterator[Any] = impl(request, ctx)
                async for response in responses:
                    try:
                        await stream.send_message(response)
                    except (StreamClosedError, StreamTerminatedError):
                        # The client ended the stream first (a container's data_in reader does when
                        # its web request is done): nobody is left to answer. grpclib has cancelled
                        # this task for it; let that cancellation land (grpclib wants to see it).
                        await asyncio.sleep(0)
                        return
            else:
                await stream.send_message(await impl(request, ctx))

    return handle


def status_of(exc: errors.KilnError) -> GrpcStatus:
    """The status a KilnError maps to (its exact class first, then its closest base)."""
    exact = _STATUS_OF.get(type(exc))
    if exact is not None:
        return exact
    return next((s for cls, s in _STATUS_OF.items() if isinstance(exc, cls)), GrpcStatus.FAILED_PRECONDITION)


@contextlib.contextmanager
def translated_errors(name: str) -> Iterator[None]:
    """A handler's errors as its client sees them: kiln's by their status, a GRPCError with its
    message bounded, anything else as a kiln bug (logged, never INTERNAL)."""
    try:
        yield
    except errors.KilnError as exc:
        raise GRPCError(status_of(exc), bounded(str(exc))) from exc
    except GRPCError as exc:
        raise GRPCError(exc.status, bounded(exc.message or ""), exc.details) from exc
    except Exception as exc:
        log.error("%s failed (a kiln bug):\n%s", name, _traceback(exc))
        # FAILED_PRECONDITION, not INTERNAL: the client re-sends INTERNAL, and a bug repeats.
        raise GRPCError(
            GrpcStatus.FAILED_PRECONDITION,
            bounded(f"kiln failed to handle {name}: {exc!r} (a kiln bug; see the server log)"),
        ) from exc


def _traceback(exc: BaseException) -> str:
    """A bug's traceback for the log, each line cut short: exceptions may quote request data."""
    lines = "".join(traceback.format_exception(exc)).splitlines()
    return "\n".join(bounded(line, 300) for line in lines[-60:])


def bounded(message: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """`message`, cut to `limit` characters (saying so)."""
    if len(message) <= limit:
        return message
    return message[: limit - 20] + " … (message cut)"


async def receive(
    stream: grpclib.server.Stream[Any, Any], message_type: Any, name: str, max_bytes: int
) -> Any:
    """The request message, read with bounds: grpclib has no message-size limit, so the length
    prefix is read first (from its protocol stream) and a message over `max_bytes` is refused before
    its body is read; bytes that do not decode are INVALID_ARGUMENT, never a traceback."""
    raw = stream._stream  # grpclib.protocol.Stream
    try:
        prefix = await raw.recv_data(5)
        if len(prefix) != 5:
            raise GRPCError(GrpcStatus.INVALID_ARGUMENT, f"{name}: the request has no message")
        if prefix[0]:
            raise GRPCError(GrpcStatus.INVALID_ARGUMENT, f"{name}: kiln does not accept compressed messages")
        length = int.from_bytes(prefix[1:], "big")
        if length > max_bytes:
            raise GRPCError(
                GrpcStatus.RESOURCE_EXHAUSTED,
                f"{name}: the request is {length} bytes, over this server's limit of {max_bytes} "
                "(KILN_MAX_MESSAGE_MB); send large payloads as blobs, as the client does",
            )
        data = await raw.recv_data(length)
    except AssertionError:  # grpclib: the stream ended before the announced length
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT, f"{name}: the request message was cut short") from None
    if len(data) != length:
        raise GRPCError(GrpcStatus.INVALID_ARGUMENT, f"{name}: the request message was cut short")
    try:
        request = message_type.FromString(data)
    except Exception:  # DecodeError, RecursionError, …: what the bytes say is not worth a log line
        raise GRPCError(
            GrpcStatus.INVALID_ARGUMENT,
            f"{name}: the request is not a valid {message_type.DESCRIPTOR.full_name} message",
        ) from None
    _check_ids(request, name)
    return request


def _check_ids(request: Any, name: str) -> None:
    """Refuse over-long IDs and names up front, before any handler looks them up or quotes them."""
    for descriptor, value in request.ListFields():
        if descriptor.type != descriptor.TYPE_STRING:
            continue
        if descriptor.name.endswith(("_id", "_ids")):
            limit, what = MAX_ID_LENGTH, "so it is no ID of this server"
        elif descriptor.name == "name" or descriptor.name.endswith("_name"):
            limit, what = MAX_NAME_LENGTH, "while names are at most 64"
        else:
            continue
        values = value if descriptor.is_repeated else [value]
        if any(len(v) > limit for v in values):
            raise GRPCError(
                GrpcStatus.INVALID_ARGUMENT,
                f"{name}: {descriptor.name} is longer than {limit} characters, {what}",
            )


def empty() -> object:
    """The reply of RPCs that answer nothing."""
    from google.protobuf import empty_pb2

    return empty_pb2.Empty()


MAX_LONG_POLL = 55.0  # seconds; the client's deadlines allow a little more


def long_poll(last_entry_id: str, timeout: float) -> tuple[int, float]:
    """A long poll's starting cursor ("" and Modal's "0-0" mean the start) and its deadline."""
    cursor = int(last_entry_id) if last_entry_id.isdigit() else 0
    return cursor, time.monotonic() + min(timeout or MAX_LONG_POLL, MAX_LONG_POLL)


class Service:
    """A grpclib service object over a prepared mapping."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping
