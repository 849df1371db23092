"""
Tests for L{clustron.wire.framing}: the sans-IO frame encoder and decoder.
"""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from clustron.errors import FrameError
from clustron.wire import framing
from clustron.wire.framing import (
    FLAG_CRC32,
    FLAG_HMAC,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Crc32,
    Frame,
    FrameDecoder,
    NoIntegrity,
    encode_frame,
)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

#: Every reason the decoder may give.
REASONS = {
    "oversized",
    "undersized",
    "bad_magic",
    "protocol_version",
    "integrity_mismatch",
    "bad_checksum",
    "bad_signature",
}


def raw_frame(
    payload: bytes,
    *,
    magic: bytes = MAGIC,
    major: int = PROTOCOL_MAJOR,
    minor: int = PROTOCOL_MINOR,
    flags: int = FLAG_CRC32,
    serializer_id: int = 1,
    frame_type: int = framing.MESSAGE,
    crc: bool = True,
) -> bytes:
    """
    Build frame bytes by hand (independently of L{encode_frame}), so header
    fields can be set to values the encoder never writes.
    """
    body = struct.pack(">2sBBBBB", magic, major, minor, flags, serializer_id, frame_type) + payload
    trailer = struct.pack(">I", zlib.crc32(body)) if crc else b""
    return struct.pack(">I", len(body) + len(trailer)) + body + trailer


def feed_expecting_error(decoder: FrameDecoder, data: bytes) -> FrameError:
    """
    Feed C{data} and return the L{FrameError} it must raise.
    """
    try:
        frames = decoder.feed(data)
    except FrameError as e:
        return e
    raise AssertionError(f"no FrameError; decoded {frames!r}")


class EncodeTests(SynchronousTestCase):
    """
    L{encode_frame} writes the documented layout.
    """

    def test_layout_with_crc32(self) -> None:
        """
        Length prefix, header, payload and a big-endian CRC32 of header and
        payload; the length counts everything after itself.
        """
        data = encode_frame(framing.HEARTBEAT, b"abc", 7, Crc32())
        self.assertEqual(data, raw_frame(b"abc", serializer_id=7, frame_type=framing.HEARTBEAT))
        (length,) = struct.unpack(">I", data[:4])
        self.assertEqual(length, len(data) - 4)
        self.assertEqual(length, HEADER_SIZE + 3 + 4)
        self.assertEqual(data[4:6], b"CX")

    def test_layout_without_integrity(self) -> None:
        """
        L{NoIntegrity} writes no trailer and no integrity flag.
        """
        data = encode_frame(framing.BYE, b"xy", 1, NoIntegrity())
        self.assertEqual(
            data, raw_frame(b"xy", flags=0, frame_type=framing.BYE, crc=False)
        )

    def test_frame_encoder(self) -> None:
        """
        L{framing.frame_encoder} encodes as L{encode_frame} does, for every
        integrity.
        """
        for integrity in (Crc32(), NoIntegrity()):
            encode = framing.frame_encoder(integrity)
            for frame_type, payload, serializer_id in [
                (framing.MESSAGE, b"abc", 1),
                (framing.MESSAGE, b"", 2),
                (framing.HEARTBEAT, b"x" * 5000, 1),
            ]:
                self.assertEqual(
                    encode(frame_type, payload, serializer_id),
                    encode_frame(frame_type, payload, serializer_id, integrity),
                )
        self.assertRaises(struct.error, framing.frame_encoder(Crc32()), 300, b"", 1)

    def test_seal_parts(self) -> None:
        """
        C{seal_parts(header, payload)} is C{seal(header + payload)}.
        """
        for integrity in (Crc32(), NoIntegrity()):
            self.assertEqual(
                integrity.seal_parts(b"head", b"body"), integrity.seal(b"headbody")
            )

    def test_crc32_seal_and_check(self) -> None:
        """
        L{Crc32.check} accepts its own seal and nothing else.
        """
        crc = Crc32()
        trailer = crc.seal(b"hello")
        self.assertEqual(len(trailer), crc.trailer_size)
        self.assertTrue(crc.check(b"hello", trailer))
        self.assertFalse(crc.check(b"hellp", trailer))
        self.assertFalse(crc.check(b"hello", bytes([trailer[0] ^ 1]) + trailer[1:]))

    def test_no_integrity(self) -> None:
        """
        L{NoIntegrity} seals with nothing and accepts anything.
        """
        none = NoIntegrity()
        self.assertEqual(none.seal(b"x"), b"")
        self.assertTrue(none.check(b"x", b""))
        self.assertEqual((none.flag, none.trailer_size), (0, 0))


class DecodeTests(SynchronousTestCase):
    """
    L{FrameDecoder} turns bytes into frames and refuses bad input.
    """

    def test_one_frame(self) -> None:
        """
        A whole frame decodes to its type, serializer id, flags and payload;
        nothing stays buffered.
        """
        decoder = FrameDecoder(1024, Crc32())
        frames = decoder.feed(encode_frame(framing.CONTROL, b'{"a":1}', 3, Crc32()))
        self.assertEqual(frames, [Frame(framing.CONTROL, 3, FLAG_CRC32, b'{"a":1}')])
        self.assertEqual(decoder.buffered, 0)

    def test_empty_payload(self) -> None:
        """
        A frame may carry no payload at all.
        """
        decoder = FrameDecoder(1024, Crc32())
        self.assertEqual(
            decoder.feed(encode_frame(framing.HEARTBEAT, b"", 1, Crc32())),
            [Frame(framing.HEARTBEAT, 1, FLAG_CRC32, b"")],
        )

    def test_byte_by_byte(self) -> None:
        """
        Fed one byte at a time, the decoder returns nothing until the last
        byte of each frame, holds exactly the bytes received so far, and then
        returns the frame.
        """
        payloads = [b"first", b"", b"third payload"]
        data = b"".join(encode_frame(framing.MESSAGE, p, 1, Crc32()) for p in payloads)
        decoder = FrameDecoder(1024, Crc32())
        got: list[bytes] = []
        held = 0
        for index in range(len(data)):
            frames = decoder.feed(data[index : index + 1])
            held += 1
            if frames:
                self.assertEqual(len(frames), 1)
                got.append(frames[0].payload)
                held = 0
            self.assertEqual(decoder.buffered, held)
        self.assertEqual(got, payloads)
        self.assertEqual(decoder.buffered, 0)

    def test_many_frames_in_one_chunk(self) -> None:
        """
        A chunk holding several frames and the start of another returns the
        whole ones, in order, and keeps the rest.
        """
        frames = [encode_frame(framing.MESSAGE, bytes([i]) * i, 1, Crc32()) for i in range(5)]
        extra = encode_frame(framing.MESSAGE, b"tail", 1, Crc32())
        decoder = FrameDecoder(1024, Crc32())
        got = decoder.feed(b"".join(frames) + extra[:6])
        self.assertEqual([f.payload for f in got], [bytes([i]) * i for i in range(5)])
        self.assertEqual(decoder.buffered, 6)
        self.assertEqual([f.payload for f in decoder.feed(extra[6:])], [b"tail"])

    def test_truncated(self) -> None:
        """
        A frame missing its last byte is no error: the decoder waits, holding
        the bytes; an empty feed changes nothing.
        """
        data = encode_frame(framing.MESSAGE, b"payload", 1, Crc32())
        decoder = FrameDecoder(1024, Crc32())
        self.assertEqual(decoder.feed(data[:-1]), [])
        self.assertEqual(decoder.buffered, len(data) - 1)
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.buffered, len(data) - 1)
        self.assertEqual(len(decoder.feed(data[-1:])), 1)

    def test_partial_length_prefix(self) -> None:
        """
        Fewer than four bytes are only buffered.
        """
        decoder = FrameDecoder(1024, Crc32())
        self.assertEqual(decoder.feed(b"\x00\x00"), [])
        self.assertEqual(decoder.buffered, 2)

    def test_oversized_rejected_before_body(self) -> None:
        """
        A length above C{max_frame_bytes} is refused as soon as its four bytes
        arrive, along with whatever came with them: nothing of the body is
        kept.
        """
        decoder = FrameDecoder(1024, Crc32())
        error = feed_expecting_error(decoder, struct.pack(">I", 0xFFFFFFFF) + b"CX" + b"\x00" * 60)
        self.assertEqual(error.reason, "oversized")
        self.assertIn("max_frame_bytes=1024", str(error))
        self.assertEqual(decoder.buffered, 0)

    def test_oversized_length_alone(self) -> None:
        """
        The four length bytes, split over two feeds, are enough to refuse.
        """
        decoder = FrameDecoder(100, Crc32())
        self.assertEqual(decoder.feed(struct.pack(">I", 101)[:3]), [])
        self.assertEqual(decoder.buffered, 3)
        self.assertEqual(feed_expecting_error(decoder, b"\x65").reason, "oversized")
        self.assertEqual(decoder.buffered, 0)

    def test_oversized_after_good_frames(self) -> None:
        """
        A huge length following good frames is refused within the same feed.
        """
        decoder = FrameDecoder(100, Crc32())
        good = encode_frame(framing.MESSAGE, b"ok", 1, Crc32())
        error = feed_expecting_error(decoder, good + struct.pack(">I", 2**31) + b"\x00" * 10)
        self.assertEqual(error.reason, "oversized")
        self.assertEqual(decoder.buffered, 0)

    def test_length_limit_is_inclusive(self) -> None:
        """
        A frame whose length is exactly C{max_frame_bytes} is accepted; one
        byte more is refused.
        """
        payload = b"p" * 20
        data = encode_frame(framing.MESSAGE, payload, 1, Crc32())
        length = len(data) - 4
        self.assertEqual(len(FrameDecoder(length, Crc32()).feed(data)), 1)
        bigger = encode_frame(framing.MESSAGE, payload + b"p", 1, Crc32())
        error = feed_expecting_error(FrameDecoder(length, Crc32()), bigger)
        self.assertEqual(error.reason, "oversized")

    def test_undersized(self) -> None:
        """
        A length too short for a header and trailer is refused, whatever
        follows.
        """
        for length in (0, 1, HEADER_SIZE - 1, HEADER_SIZE + Crc32.trailer_size - 1):
            decoder = FrameDecoder(1024, Crc32())
            error = feed_expecting_error(decoder, struct.pack(">I", length))
            self.assertEqual(error.reason, "undersized", length)
            self.assertEqual(decoder.buffered, 0)

    def test_undersized_without_trailer(self) -> None:
        """
        Without a trailer, the header alone is the minimum.
        """
        decoder = FrameDecoder(1024, NoIntegrity())
        self.assertEqual(
            feed_expecting_error(decoder, struct.pack(">I", HEADER_SIZE - 1)).reason,
            "undersized",
        )
        self.assertEqual(
            len(FrameDecoder(1024, NoIntegrity()).feed(raw_frame(b"", flags=0, crc=False))), 1
        )

    def test_bad_magic(self) -> None:
        """
        A frame not starting with C{CX} is refused.
        """
        error = feed_expecting_error(FrameDecoder(1024, Crc32()), raw_frame(b"x", magic=b"HT"))
        self.assertEqual(error.reason, "bad_magic")

    def test_wrong_protocol_major(self) -> None:
        """
        A frame of another major protocol version is refused.
        """
        for major in (0, PROTOCOL_MAJOR + 1, 255):
            error = feed_expecting_error(
                FrameDecoder(1024, Crc32()), raw_frame(b"x", major=major)
            )
            self.assertEqual(error.reason, "protocol_version")
            self.assertIn(f"{major}.x", str(error))

    def test_other_minor_accepted(self) -> None:
        """
        Minor versions are compatible.
        """
        frames = FrameDecoder(1024, Crc32()).feed(raw_frame(b"x", minor=PROTOCOL_MINOR + 9))
        self.assertEqual([f.payload for f in frames], [b"x"])

    def test_bad_checksum(self) -> None:
        """
        A frame whose trailer does not match is refused.
        """
        data = bytearray(encode_frame(framing.MESSAGE, b"payload", 1, Crc32()))
        data[-1] ^= 0x80
        error = feed_expecting_error(FrameDecoder(1024, Crc32()), bytes(data))
        self.assertEqual(error.reason, "bad_checksum")

    def test_every_bit_flip_is_caught(self) -> None:
        """
        Flipping any single bit of the header, payload or trailer is refused
        with the reason that fits the field; nothing is ever decoded from it.
        """
        data = encode_frame(framing.MESSAGE, b"some payload", 2, Crc32())
        expected_by_offset = {4: "bad_magic", 5: "bad_magic", 6: "protocol_version"}
        expected_by_offset[8] = "integrity_mismatch"
        for offset in range(4, len(data)):
            for bit in range(8):
                damaged = bytearray(data)
                damaged[offset] ^= 1 << bit
                decoder = FrameDecoder(1024, Crc32())
                error = feed_expecting_error(decoder, bytes(damaged))
                expected = expected_by_offset.get(offset, "bad_checksum")
                if offset == 8 and not (1 << bit) & (FLAG_CRC32 | FLAG_HMAC):
                    # A flag bit that is not an integrity bit: the CRC catches it.
                    expected = "bad_checksum"
                self.assertEqual(error.reason, expected, (offset, bit))
                self.assertEqual(decoder.buffered, 0)

    def test_length_bit_flips_never_decode(self) -> None:
        """
        Flipping a bit of the length prefix either is refused or leaves the
        decoder waiting: it never produces a frame.
        """
        data = encode_frame(framing.MESSAGE, b"some payload", 2, Crc32())
        for offset in range(4):
            for bit in range(8):
                damaged = bytearray(data)
                damaged[offset] ^= 1 << bit
                decoder = FrameDecoder(1 << 20, Crc32())
                try:
                    frames = decoder.feed(bytes(damaged))
                except FrameError as e:
                    self.assertIn(e.reason, REASONS)
                else:
                    self.assertEqual(frames, [], (offset, bit))

    def test_integrity_mismatch(self) -> None:
        """
        A checksummed frame on a connection without integrity, a frame without
        a checksum on a checksummed connection, and a signed frame on a
        checksummed connection are all refused.
        """
        error = feed_expecting_error(
            FrameDecoder(1024, NoIntegrity()), encode_frame(framing.MESSAGE, b"x", 1, Crc32())
        )
        self.assertEqual(error.reason, "integrity_mismatch")
        error = feed_expecting_error(
            FrameDecoder(1024, Crc32()),
            encode_frame(framing.MESSAGE, b"long enough", 1, NoIntegrity()),
        )
        self.assertEqual(error.reason, "integrity_mismatch")
        error = feed_expecting_error(
            FrameDecoder(1024, Crc32()), raw_frame(b"x", flags=FLAG_HMAC)
        )
        self.assertEqual(error.reason, "integrity_mismatch")

    def test_poisoned_after_error(self) -> None:
        """
        After an error, every later feed raises the same error, good bytes
        included.
        """
        decoder = FrameDecoder(1024, Crc32())
        first = feed_expecting_error(decoder, raw_frame(b"x", magic=b"ZZ"))
        again = feed_expecting_error(decoder, encode_frame(framing.MESSAGE, b"x", 1, Crc32()))
        self.assertIs(again, first)
        self.assertEqual(decoder.buffered, 0)

    def test_set_integrity(self) -> None:
        """
        After L{FrameDecoder.set_integrity} the following frames are checked
        the new way, including bytes already buffered.
        """
        decoder = FrameDecoder(1024, Crc32())
        first = encode_frame(framing.HELLO, b"h", 1, Crc32())
        second = encode_frame(framing.MESSAGE, b"m", 1, NoIntegrity())
        self.assertEqual([f.payload for f in decoder.feed(first + second[:3])], [b"h"])
        decoder.set_integrity(NoIntegrity())
        self.assertEqual(decoder.feed(second[3:]), [Frame(framing.MESSAGE, 1, 0, b"m")])


frame_strategy = st.builds(
    Frame,
    frame_type=st.integers(0, 255),
    serializer_id=st.integers(0, 255),
    flags=st.just(0),
    payload=st.binary(max_size=300),
)


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input.
    """

    @PROPERTY
    @given(
        chunks=st.lists(st.binary(max_size=200), max_size=20),
        max_frame_bytes=st.integers(HEADER_SIZE + 4, 300),
        crc=st.booleans(),
    )
    def test_garbage(self, chunks: list[bytes], max_frame_bytes: int, crc: bool) -> None:
        """
        Arbitrary bytes in arbitrary chunks raise nothing but L{FrameError}
        (with a known reason), and the decoder never holds more than one
        maximal frame and its length prefix.
        """
        decoder = FrameDecoder(max_frame_bytes, Crc32() if crc else NoIntegrity())
        for chunk in chunks:
            try:
                frames = decoder.feed(chunk)
            except FrameError as e:
                self.assertIn(e.reason, REASONS)
                self.assertEqual(decoder.buffered, 0)
                return
            for frame in frames:
                self.assertLessEqual(len(frame.payload), max_frame_bytes)
            self.assertLessEqual(decoder.buffered, max_frame_bytes + 4)

    @PROPERTY
    @given(
        body=st.binary(max_size=200),
        max_frame_bytes=st.integers(HEADER_SIZE + 4, 300),
    )
    def test_garbage_after_magic(self, body: bytes, max_frame_bytes: int) -> None:
        """
        Garbage that gets past the length and magic checks (the hard case for
        a decoder) still only raises L{FrameError}.
        """
        data = struct.pack(">I", min(len(body) + 2, max_frame_bytes)) + MAGIC + body
        decoder = FrameDecoder(max_frame_bytes, Crc32())
        try:
            decoder.feed(data)
        except FrameError as e:
            self.assertIn(e.reason, REASONS)
        self.assertLessEqual(decoder.buffered, max_frame_bytes + 4)

    @PROPERTY
    @given(
        frames=st.lists(frame_strategy, max_size=8),
        cuts=st.lists(st.integers(0, 4000), max_size=12),
        crc=st.booleans(),
    )
    def test_roundtrip_split_anywhere(
        self, frames: list[Frame], cuts: list[int], crc: bool
    ) -> None:
        """
        Encoded frames, concatenated and split at arbitrary points, decode to
        the same frames in the same order, and nothing is left buffered.
        """
        integrity = Crc32() if crc else NoIntegrity()
        data = b"".join(
            encode_frame(f.frame_type, f.payload, f.serializer_id, integrity) for f in frames
        )
        points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
        decoder = FrameDecoder(HEADER_SIZE + 300 + 4, integrity)
        decoded: list[Frame] = []
        for start, stop in zip(points, points[1:], strict=False):
            decoded.extend(decoder.feed(data[start:stop]))
        expected = [f._replace(flags=integrity.flag) for f in frames]
        self.assertEqual(decoded, expected)
        self.assertEqual(decoder.buffered, 0)
