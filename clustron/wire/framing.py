"""
Sans-IO framing: bytes in, frames out, and frames in, bytes out.

A frame on the wire::

    +----------+-------+-------+-------+-------+------------+------+---------+---------+
    | length   | magic | major | minor | flags | serializer | type | payload | trailer |
    | u32 (BE) | "CX"  | u8    | u8    | u8    | u8         | u8   | ...     | 0/4/44  |
    +----------+-------+-------+-------+-------+------------+------+---------+---------+

``length`` counts every byte after itself. The trailer is chosen by the
connection's L{IIntegrity}: a CRC32 of header and payload (the default), an
HMAC-SHA256 tag (when the cluster has a secret), or nothing. The length is
checked against C{max_frame_bytes} as soon as its four bytes arrive, before any
of the body is buffered, so a hostile length never costs memory.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from clustron.errors import FrameError

MAGIC = b"CX"

#: Protocol version spoken by this code. A different major version is refused
#: at handshake; minor versions are compatible.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">2sBBBBB")
_PREFIX = struct.Struct(">I2sBBBBB")  # the length, then the header
HEADER_SIZE = _HEADER.size

# Frame types.
HELLO = 1
REJECT = 2
BYE = 3
CONTROL = 4
HEARTBEAT = 5
MESSAGE = 6
PROOF = 7

#: Frame types of the handshake, protected by the connection's handshake
#: integrity rather than its session integrity.
HANDSHAKE_TYPES = frozenset({1, 2, 7})

FRAME_TYPE_NAMES = {
    HELLO: "hello",
    REJECT: "reject",
    BYE: "bye",
    CONTROL: "control",
    HEARTBEAT: "heartbeat",
    MESSAGE: "message",
    PROOF: "proof",
}

# Flag bits.
FLAG_CRC32 = 0x01
FLAG_HMAC = 0x02


class Frame(NamedTuple):
    """
    One decoded frame.

    @ivar frame_type: one of the frame type constants (L{HELLO}, ...).
    @ivar serializer_id: the wire id of the serializer that encoded the payload.
    @ivar flags: the header's flag bits.
    @ivar payload: the payload bytes (still serialized).
    """

    frame_type: int
    serializer_id: int
    flags: int
    payload: bytes


class IIntegrity(Protocol):
    """
    How a connection protects each frame: the trailer it appends and checks.
    (A typing protocol, not a zope interface: it is internal to the wire.)
    """

    flag: int
    trailer_size: int

    def seal(self, data: bytes) -> bytes:
        """
        @return: the trailer for C{data} (header and payload).
        """

    def check(self, data: bytes, trailer: bytes) -> bool:
        """
        @return: whether C{trailer} is valid for C{data}.
        """

    def seal_parts(self, header: bytes, payload: bytes) -> bytes:
        """
        @return: the trailer for C{header + payload}, without building it.
        """


class Crc32:
    """
    A CRC32 checksum trailer: catches corruption, not forgery.
    """

    flag = FLAG_CRC32
    trailer_size = 4
    name = "crc32"

    def seal(self, data: bytes) -> bytes:
        """
        @return: the big-endian CRC32 of C{data}.
        """
        return _LENGTH.pack(zlib.crc32(data))

    def check(self, data: bytes, trailer: bytes) -> bool:
        """
        @return: whether C{trailer} is the CRC32 of C{data}.
        """
        return _LENGTH.pack(zlib.crc32(data)) == trailer

    def seal_parts(self, header: bytes, payload: bytes) -> bytes:
        """
        @return: the big-endian CRC32 of C{header + payload} (the CRC of a
            header is computed once and continued over the payload).
        """
        start = _HEADER_CRCS.get(header)
        if start is None:
            start = zlib.crc32(header)
            if len(_HEADER_CRCS) < 4096:
                _HEADER_CRCS[header] = start
        return _LENGTH.pack(zlib.crc32(payload, start))


class NoIntegrity:
    """
    No trailer at all: for links that are protected otherwise (TLS).
    """

    flag = 0
    trailer_size = 0
    name = "none"

    def seal(self, data: bytes) -> bytes:
        """
        @return: an empty trailer.
        """
        return b""

    def check(self, data: bytes, trailer: bytes) -> bool:
        """
        @return: True: there is nothing to check.
        """
        return True

    def seal_parts(self, header: bytes, payload: bytes) -> bytes:
        """
        @return: an empty trailer.
        """
        return b""


_COUNTER = struct.Struct(">Q")


def key_id(key: bytes) -> bytes:
    """
    The 4-byte id of a signing key written in each signed frame, so a
    receiver that holds several keys (during a rotation) picks the right one
    without trying them all. It reveals nothing useful about the key.
    """
    return hashlib.sha256(b"clustron-key-id" + key).digest()[:4]


class HmacSha256:
    """
    An HMAC-SHA256 trailer: C{counter (8) | key id (4) | tag (32)}.

    The tag covers the connection's session id, the counter, the header and
    the payload. The first key signs; every key verifies, so keys rotate
    without downtime (add the new key second, then make it first, then drop
    the old one). Each direction's counter must strictly grow, so a frame
    replayed on the same connection is refused; the session id binds frames
    to one connection, so one replayed on another is refused too.
    """

    flag = FLAG_HMAC
    trailer_size = 8 + 4 + 32
    name = "hmac-sha256"

    def __init__(self, keys: Sequence[bytes], session: bytes) -> None:
        if not keys:
            raise ValueError("hmac-sha256 needs at least one key")
        self._primary = keys[0]
        self._primary_id = key_id(keys[0])
        self._keys = {key_id(key): key for key in keys}
        self._session = session
        self._sent = 0
        self._received = 0

    def seal(self, data: bytes) -> bytes:
        """
        @return: the trailer for the next frame sent.
        """
        self._sent += 1
        counter = _COUNTER.pack(self._sent)
        tag = hmac.new(self._primary, self._session + counter + data, hashlib.sha256).digest()
        return counter + self._primary_id + tag

    def seal_parts(self, header: bytes, payload: bytes) -> bytes:
        """
        @return: the trailer for the next frame sent, C{header + payload}
            being its data.
        """
        self._sent += 1
        counter = _COUNTER.pack(self._sent)
        mac = hmac.new(self._primary, self._session + counter + header, hashlib.sha256)
        mac.update(payload)
        return counter + self._primary_id + mac.digest()

    def check(self, data: bytes, trailer: bytes) -> bool:
        """
        @return: whether the trailer is a valid, fresh signature of C{data}.
        """
        counter = trailer[:8]
        key = self._keys.get(trailer[8:12])
        if key is None:
            return False
        (number,) = _COUNTER.unpack(counter)
        if number <= self._received:
            return False
        expected = hmac.new(key, self._session + counter + data, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, trailer[12:]):
            return False
        self._received = number
        return True


def encode_frame(
    frame_type: int,
    payload: bytes,
    serializer_id: int,
    integrity: IIntegrity,
) -> bytes:
    """
    Build the bytes of one frame, length prefix included.
    """
    flag = integrity.flag
    header = _HEADERS.get((flag, serializer_id, frame_type))
    if header is None:
        header = _header(flag, serializer_id, frame_type)
    trailer = integrity.seal_parts(header, payload)
    return b"".join(
        (_LENGTH.pack(HEADER_SIZE + len(payload) + len(trailer)), header, payload, trailer)
    )


def frame_encoder(integrity: IIntegrity) -> Callable[[int, bytes, int], bytes]:
    """
    A function C{encode(frame_type, payload, serializer_id)} equivalent to
    L{encode_frame} with C{integrity}, faster for a connection that sends
    many frames: with L{Crc32} each header and its CRC are worked out once.
    """
    if type(integrity) is not Crc32:
        return lambda frame_type, payload, serializer_id: encode_frame(
            frame_type, payload, serializer_id, integrity
        )
    starts: dict[tuple[int, int], tuple[bytes, int]] = {}
    pack = _LENGTH.pack
    crc32 = zlib.crc32
    join = b"".join
    overhead = HEADER_SIZE + Crc32.trailer_size

    def encode(frame_type: int, payload: bytes, serializer_id: int) -> bytes:
        known = starts.get((serializer_id, frame_type))
        if known is None:
            header = _header(FLAG_CRC32, serializer_id, frame_type)
            known = (header, crc32(header))
            if len(starts) < 1024:
                starts[(serializer_id, frame_type)] = known
        header, start = known
        return join((pack(overhead + len(payload)), header, payload, pack(crc32(payload, start))))

    return encode


#: Frame headers already packed, by C{(flag, serializer_id, frame_type)}.
_HEADERS: dict[tuple[int, int, int], bytes] = {}

#: The CRC32 of each header in L{_HEADERS}.
_HEADER_CRCS: dict[bytes, int] = {}


def _header(flag: int, serializer_id: int, frame_type: int) -> bytes:
    """
    Pack a frame header (and remember it: there are few distinct ones).

    @raise struct.error: when a field does not fit its byte.
    """
    header = _HEADER.pack(MAGIC, PROTOCOL_MAJOR, PROTOCOL_MINOR, flag, serializer_id, frame_type)
    if len(_HEADERS) < 4096:
        _HEADERS[(flag, serializer_id, frame_type)] = header
    return header


class FrameDecoder:
    """
    Feed it bytes as they arrive; it returns the complete frames they finish.

    After it raises L{FrameError} the decoder is poisoned: the connection must
    be closed, and further calls raise the same error.

    @ivar max_frame_bytes: the largest accepted value of the length prefix.
    @ivar buffered: the number of bytes held while waiting for a frame's end.
    """

    def __init__(
        self,
        max_frame_bytes: int,
        integrity: IIntegrity,
        handshake_integrity: IIntegrity | None = None,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._integrity = integrity
        self._handshake_integrity = handshake_integrity
        self._buffer = bytearray()
        self._error: FrameError | None = None
        self._minimum = HEADER_SIZE + integrity.trailer_size
        self._crc = type(integrity) is Crc32

    @property
    def buffered(self) -> int:
        """
        The number of bytes held, waiting for the rest of a frame.
        """
        return len(self._buffer)

    def set_integrity(self, integrity: IIntegrity) -> None:
        """
        Change the trailer check for the frames that follow (after the
        handshake agrees on one).
        """
        self._integrity = integrity
        self._minimum = HEADER_SIZE + integrity.trailer_size
        self._crc = type(integrity) is Crc32

    def feed(self, data: bytes) -> list[Frame]:
        """
        Add received bytes.

        @return: every frame completed by C{data}, in order.
        @raise FrameError: when the bytes break the framing rules; the reason
            is one of C{oversized}, C{undersized}, C{bad_magic},
            C{protocol_version}, C{bad_checksum}, C{bad_signature}.
        """
        if self._crc and not self._buffer and self._error is None and type(data) is bytes:
            # The common case: one whole, valid CRC32 frame, nothing held.
            # Anything else (or anything wrong) takes the general path below,
            # which reports what is wrong.
            end = len(data)
            if end >= 4 + HEADER_SIZE + 4:
                length, magic, major, _minor, flags, serializer_id, frame_type = (
                    _PREFIX.unpack_from(data)
                )
                if (
                    length + 4 == end
                    and length <= self.max_frame_bytes
                    and magic == MAGIC
                    and major == PROTOCOL_MAJOR
                    and flags & (FLAG_CRC32 | FLAG_HMAC) == FLAG_CRC32
                    and frame_type not in HANDSHAKE_TYPES
                    and zlib.crc32(data[4 : end - 4]) == _LENGTH.unpack_from(data, end - 4)[0]
                ):
                    return [
                        tuple.__new__(
                            Frame,
                            (frame_type, serializer_id, flags, data[4 + HEADER_SIZE : end - 4]),
                        )
                    ]
        if self._error is not None:
            raise self._error
        held = self._buffer
        if held:
            held += data
            buffer: bytes | bytearray = held
        else:
            # Nothing held back: read the frames straight from the bytes
            # received, without copying them into the buffer first.
            buffer = data if type(data) is bytes else bytes(data)
        frames: list[Frame] = []
        offset = 0
        end = len(buffer)
        trailer_size = self._integrity.trailer_size
        minimum = self._minimum
        max_frame_bytes = self.max_frame_bytes
        handshake_integrity = self._handshake_integrity
        unpack_length = _LENGTH.unpack_from
        unpack_header = _HEADER.unpack_from
        new_frame = tuple.__new__  # Frame(...) without its Python-level __new__
        try:
            while end - offset >= 4:
                (length,) = unpack_length(buffer, offset)
                if length > max_frame_bytes:
                    raise FrameError(
                        "oversized",
                        f"frame of {length} bytes exceeds max_frame_bytes={max_frame_bytes}",
                    )
                if length < minimum:
                    raise FrameError("undersized", f"frame of {length} bytes is too short")
                if end - offset - 4 < length:
                    break
                start = offset + 4
                magic, major, _minor, flags, serializer_id, frame_type = unpack_header(
                    buffer, start
                )
                if magic != MAGIC:
                    raise FrameError("bad_magic", f"magic {bytes(magic)!r}")
                if major != PROTOCOL_MAJOR:
                    raise FrameError(
                        "protocol_version",
                        f"frame of protocol {major}.x, this node speaks {PROTOCOL_MAJOR}.x",
                    )
                stop = start + length
                body_end = stop - trailer_size
                if trailer_size or flags & (FLAG_CRC32 | FLAG_HMAC):
                    if handshake_integrity is not None and frame_type in HANDSHAKE_TYPES:
                        integrity = handshake_integrity
                    else:
                        integrity = self._integrity
                    if flags & (FLAG_CRC32 | FLAG_HMAC) != integrity.flag:
                        raise FrameError(
                            "integrity_mismatch",
                            f"frame flags {flags:#x}, connection expects {integrity.flag:#x}",
                        )
                    # (Copying a slice costs less than a memoryview of it,
                    # and much less than the checksum of a large one.)
                    if type(integrity) is Crc32:
                        # Crc32.check, without copying the trailer out.
                        valid = zlib.crc32(buffer[start:body_end]) == unpack_length(
                            buffer, body_end
                        )[0]
                    else:
                        trailer = bytes(buffer[body_end:stop])
                        # (bytes() of a bytes slice is that slice, no copy.)
                        valid = integrity.check(bytes(buffer[start:body_end]), trailer)
                    if not valid:
                        raise FrameError(
                            "bad_signature" if integrity.flag == FLAG_HMAC else "bad_checksum"
                        )
                if held:
                    payload = bytes(buffer[start + HEADER_SIZE : body_end])
                else:
                    payload = buffer[start + HEADER_SIZE : body_end]  # type: ignore[assignment]
                frames.append(new_frame(Frame, (frame_type, serializer_id, flags, payload)))
                offset = stop
        except FrameError as e:
            self._error = e
            self._buffer = bytearray()
            raise
        if held:
            if offset:
                del held[:offset]
        elif offset < end:
            self._buffer = bytearray(buffer[offset:])
        return frames
