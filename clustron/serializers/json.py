"""
The ``json`` serializer (the default): plain data, readable on the wire.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} overflows a float")
    return value


# What dumps refuses, loads refuses too: no NaN or infinities (spelled out or
# reached by overflow), so every decoded value can be encoded again.
_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

# A \u escape of a UTF-16 surrogate: the decoded text may then hold a lone
# surrogate, which UTF-8 (and so dumps) cannot carry.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
        @raise SerializationError: for anything that is not UTF-8 JSON, and
            for what L{dumps} would refuse (NaN, infinities, lone surrogates).
        """
        try:
            text = bytes(data).decode("utf-8")
            obj = _decoder.decode(text)
            if _SURROGATE_ESCAPE.search(text):
                # Paired surrogates are fine; a lone one is not.
                _encoder.encode(obj).encode("utf-8")
        except (UnicodeError, ValueError, RecursionError) as e:
            raise SerializationError(f"malformed json: {e}") from None
        return obj


json_serializer = JsonSerializer()
