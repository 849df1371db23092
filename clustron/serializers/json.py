"""
The ``json`` serializer (the default): plain data, readable on the wire.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder()


@implementer(IPlugin, ISerializerPlugin)
class JsonSerializer:
    """
    Encodes dicts, lists, strings, numbers, booleans and None as UTF-8 JSON.
    Bytes, NaN and infinities are refused.
    """

    name = "json"
    wire_id = 1

    def dumps(self, obj: Any) -> bytes:
        """
        @raise SerializationError: for values JSON cannot carry.
        """
        try:
            return _encoder.encode(obj).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise SerializationError(f"json cannot encode this value: {e}") from None

    def loads(self, data: bytes) -> Any:
        """
        @raise SerializationError: for anything that is not UTF-8 JSON.
        """
        try:
            text = bytes(data).decode("utf-8")
            obj, end = _decoder.raw_decode(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SerializationError(f"malformed json: {e}") from None
        if text[end:].strip():
            raise SerializationError("malformed json: trailing data")
        return obj


json_serializer = JsonSerializer()
