"""
The ``json`` serializer (the default): plain data, readable on the wire.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _unencodable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# The C encoder behind _encoder, made once: JSONEncoder.encode builds one per
# call. No circular-reference bookkeeping (a cycle ends in RecursionError).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_chunks = (
    _c_make_encoder(
        None, _unencodable, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if _c_make_encoder is not None
    else None
)


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
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # the C scanner, set in __init__

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
            if _encode_chunks is None:
                return _encoder.encode(obj).encode("utf-8")
            return "".join(_encode_chunks(obj, 0)).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise SerializationError(f"json cannot encode this value: {e}") from None

    def loads(self, data: bytes) -> Any:
        """
        @raise SerializationError: for anything that is not UTF-8 JSON, and
            for what L{dumps} would refuse (NaN, infinities, lone surrogates).
        """
        try:
            text = (data if type(data) is bytes else bytes(data)).decode("utf-8")
            try:
                obj, end = _scan_once(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                # Leading or trailing whitespace, or garbage: the full
                # decoder accepts the one and explains the other.
                obj = _decoder.decode(text)
            if "\\u" in text and _SURROGATE_ESCAPE.search(text):
                # Paired surrogates are fine; a lone one is not.
                _encoder.encode(obj).encode("utf-8")
        except (UnicodeError, ValueError, RecursionError) as e:
            raise SerializationError(f"malformed json: {e}") from None
        return obj


json_serializer = JsonSerializer()
