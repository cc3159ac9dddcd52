"""Modal-specific object state: the protobuf definitions and handle metadata the client and its
containers need back. The core holds the protocol-neutral side of the same objects, and keeps
this side too, as opaque bytes (`encode_meta`), so that it survives a restart."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from modal_proto import api_pb2

from kiln.core.functions import FunctionRecord


@dataclass
class ModalFunction:
    function_id: str
    app_id: str
    tag: str
    handle: api_pb2.FunctionHandleMetadata
    function: api_pb2.Function | None = None  # set by FunctionCreate (a variant: options merged)
    serialized_params: bytes = b""  # a class instance's parameters (variants only)


def encode_meta(function: ModalFunction) -> bytes:
    """What the journal keeps beside the Function definition."""
    return json.dumps(
        {
            "tag": function.tag,
            "handle": base64.b64encode(function.handle.SerializeToString()).decode(),
            "params": base64.b64encode(function.serialized_params).decode(),
        }
    ).encode()


def decode_meta(record: FunctionRecord, function: api_pb2.Function) -> ModalFunction:
    meta = json.loads(record.meta)
    return ModalFunction(
        record.function_id,
        record.app_id,
        meta["tag"],
        api_pb2.FunctionHandleMetadata.FromString(base64.b64decode(meta["handle"])),
        function,
        base64.b64decode(meta["params"]),
    )


@dataclass
class Registry:
    functions: dict[str, ModalFunction] = field(default_factory=dict)
    classes: dict[str, tuple[str, api_pb2.ClassHandleMetadata]] = field(
        default_factory=dict
    )  # id → (app, meta)

    def app_layout(
        self, app_id: str, function_ids: dict[str, str], class_ids: dict[str, str]
    ) -> api_pb2.AppLayout:
        """The layout containers index strictly: an Object for every function, class and dependency."""
        layout = api_pb2.AppLayout(function_ids=function_ids, class_ids=class_ids)
        seen: set[str] = set()

        def add(obj: api_pb2.Object) -> None:
            if obj.object_id not in seen:
                seen.add(obj.object_id)
                layout.objects.append(obj)

        for function_id in function_ids.values():
            fn = self.functions.get(function_id)
            if fn is not None:
                add(api_pb2.Object(object_id=function_id, function_handle_metadata=fn.handle))
        for class_id in class_ids.values():
            entry = self.classes.get(class_id)
            if entry is not None:
                add(api_pb2.Object(object_id=class_id, class_handle_metadata=entry[1]))
        for function_id in function_ids.values():
            fn = self.functions.get(function_id)
            if fn is not None and fn.function is not None:
                for dep in fn.function.object_dependencies:
                    add(api_pb2.Object(object_id=dep.object_id))
        return layout
