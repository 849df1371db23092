"""
The ``msgpack`` serializer: compact binary, carries bytes natively.

Needs the ``msgpack`` package (``pip install 'clustron[msgpack]'``); it is
imported on first use, so this plugin is always listed.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from clustron.errors import SerializationError
from clustron.interfaces import ISerializerPlugin


def _module() -> Any:
    try:
        import msgpack
    except ImportError:
        raise SerializationError(
            "the msgpack serializer needs the msgpack package: pip install 'clustron[msgpack]'"
        ) from None
    return msgpack


@implementer(IPlugin, ISerializerPlugin)
class MsgpackSerializer:
    """
    Encodes dicts (with string keys), lists, strings, bytes, numbers,
    booleans and None with MessagePack.
    """

    name = "msgpack"
    wire_id = 2

    def dumps(self, obj: Any) -> bytes:
        """
        @raise SerializationError: for values msgpack cannot carry.
        """
        msgpack = _module()
        try:
            data: bytes = msgpack.packb(obj, use_bin_type=True)
            return data
        except (TypeError, ValueError, OverflowError) as e:
            raise SerializationError(f"msgpack cannot encode this value: {e}") from None

    def loads(self, data: bytes) -> Any:
        """
        @raise SerializationError: for anything that is not one complete
            MessagePack value.
        """
        msgpack = _module()
        try:
            return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except (
            ValueError,
            TypeError,
            msgpack.ExtraData,
            msgpack.UnpackException,
            RecursionError,
        ) as e:
            raise SerializationError(f"malformed msgpack: {e}") from None


msgpack_serializer = MsgpackSerializer()
