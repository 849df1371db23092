"""
The ``protobuf`` serializer: message bodies as ``google.protobuf.Value``.

Clustron's bodies are plain data (dicts, lists, strings, numbers, booleans,
None), which is exactly what the well-known C{google.protobuf.Value} type
(C{struct.proto}) describes, so any protobuf implementation in any language
can read the payloads. Like JSON, C{Value} has one number type (a double):
integers beyond 2**53 and bytes are refused rather than silently changed.

Needs the ``protobuf`` package (``pip install 'clustron[protobuf]'``); it is
imported on first use, so this plugin is always listed.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin

_MAX_SAFE_INT = 2**53
_MAX_DEPTH = 100


def _struct_pb2() -> Any:
    try:
        from google.protobuf import struct_pb2
    except ImportError:
        raise SerializationError(
            "the protobuf serializer needs the protobuf package: pip install 'clustron[protobuf]'"
        ) from None
    return struct_pb2


def _to_value(obj: Any, value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise SerializationError("protobuf cannot encode values nested this deep")
    if obj is None:
        value.null_value = 0
    elif isinstance(obj, bool):
        value.bool_value = obj
    elif isinstance(obj, int):
        if abs(obj) > _MAX_SAFE_INT:
            raise SerializationError(f"protobuf Value cannot carry the integer {obj} exactly")
        value.number_value = float(obj)
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise SerializationError("protobuf Value cannot carry NaN or infinity")
        value.number_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (list, tuple)):
        items = value.list_value
        items.SetInParent()
        for item in obj:
            _to_value(item, items.values.add(), depth + 1)
    elif isinstance(obj, dict):
        fields = value.struct_value
        fields.SetInParent()
        for key, item in obj.items():
            if not isinstance(key, str):
                raise SerializationError(f"protobuf Struct keys must be strings, not {key!r}")
            _to_value(item, fields.fields[key], depth + 1)
    else:
        raise SerializationError(f"protobuf cannot encode a {type(obj).__name__}")


def _from_value(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise SerializationError("protobuf value nested too deep")
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "list_value":
        return [_from_value(item, depth + 1) for item in value.list_value.values]
    return {key: _from_value(item, depth + 1) for key, item in value.struct_value.fields.items()}


@implementer(IPlugin, ISerializerPlugin)
class ProtobufSerializer:
    """
    Encodes plain data as a serialized C{google.protobuf.Value}. Whole
    floats come back as ints (C{Value} has a single number type).
    """

    name = "protobuf"
    wire_id = 3

    def dumps(self, obj: Any) -> bytes:
        """
        @raise SerializationError: for values a C{Value} cannot carry.
        """
        struct_pb2 = _struct_pb2()
        value = struct_pb2.Value()
        try:
            _to_value(obj, value)
        except UnicodeEncodeError as e:
            # Text protobuf cannot carry as UTF-8 (a lone surrogate).
            raise SerializationError(f"protobuf cannot encode this text: {e}") from None
        data: bytes = value.SerializeToString()
        return data

    def loads(self, data: bytes) -> Any:
        """
        @raise SerializationError: for bytes that are not a C{Value}.
        """
        struct_pb2 = _struct_pb2()
        from google.protobuf.message import DecodeError

        value = struct_pb2.Value()
        try:
            value.ParseFromString(bytes(data))
        except (DecodeError, RuntimeWarning, RecursionError, ValueError) as e:
            raise SerializationError(f"malformed protobuf Value: {e}") from None
        return _from_value(value)


protobuf_serializer = ProtobufSerializer()
