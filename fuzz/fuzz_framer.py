"""
Fuzz the framer: L{clustron.wire.framing.FrameDecoder.feed} with CRC32,
HMAC-SHA256 (two keys, so rotation is exercised) and no trailer.

Each input picks a trailer, a C{max_frame_bytes} and one of two modes:

  - raw: the rest of the input is fed as arbitrary bytes, cut into chunks
    of fuzzer-chosen sizes;
  - frames: a sequence of properly encoded frames (sealed with either key),
    some of them damaged (a flipped byte, a cut, a replay, inserted garbage),
    fed in chunks.

Only L{clustron.errors.FrameError} may escape C{feed}. Beyond that, these
must hold (a failed assertion is a crash): the decoder never holds more than
one incomplete frame (C{buffered <= max_frame_bytes + 3}); once it raised,
it raises the same error again; undamaged frames come out exactly as they
went in; a replayed or re-signed-with-an-unknown-key frame is refused.

    python fuzz/fuzz_framer.py -max_total_time=60
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["clustron"]):
    from clustron.errors import FrameError
    from clustron.wire import framing
    from clustron.wire.framing import (
        Crc32,
        Frame,
        FrameDecoder,
        HmacSha256,
        NoIntegrity,
        encode_frame,
    )

KEYS = (b"k" * 32, b"second key, still accepted")
SESSION = b"s" * 32


def _integrities(kind: int, primary: int) -> tuple[object, object]:
    """
    @return: C{(sender, receiver)} trailers of one kind.
    """
    if kind == 0:
        return Crc32(), Crc32()
    if kind == 1:
        keys = KEYS if primary == 0 else KEYS[::-1]
        return HmacSha256(keys, SESSION), HmacSha256(KEYS, SESSION)
    return NoIntegrity(), NoIntegrity()


def _feed(decoder: FrameDecoder, stream: bytes, fdp: atheris.FuzzedDataProvider) -> list[Frame]:
    """
    Feed C{stream} in fuzzer-sized chunks; check the decoder's invariants.

    @return: the frames decoded before any error.
    """
    frames: list[Frame] = []
    offset = 0
    while offset < len(stream):
        size = fdp.ConsumeIntInRange(1, 64) if fdp.ConsumeBool() else len(stream) - offset
        chunk = stream[offset : offset + size]
        offset += size
        try:
            frames.extend(decoder.feed(chunk))
        except FrameError as first:
            try:
                decoder.feed(b"more")
            except FrameError as second:
                assert second is first, "a poisoned decoder raised another error"
            else:
                raise AssertionError("a poisoned decoder accepted bytes") from None
            assert decoder.buffered == 0, "a poisoned decoder holds bytes"
            raise
        assert decoder.buffered <= decoder.max_frame_bytes + 3, (
            f"decoder holds {decoder.buffered} bytes with max_frame_bytes={decoder.max_frame_bytes}"
        )
    return frames


def test_one_input(data: bytes) -> None:
    """
    One fuzz case; see the module docstring.
    """
    fdp = atheris.FuzzedDataProvider(data)
    kind = fdp.ConsumeIntInRange(0, 2)
    sender, receiver = _integrities(kind, fdp.ConsumeIntInRange(0, 1))
    max_frame_bytes = fdp.PickValueInList([16, 64, 300, 4096, 1048576])
    decoder = FrameDecoder(max_frame_bytes, receiver)  # type: ignore[arg-type]
    if fdp.ConsumeBool():
        try:
            _feed(decoder, fdp.ConsumeBytes(fdp.remaining_bytes()), fdp)
        except FrameError:
            pass
        return
    sent: list[Frame] = []
    stream = b""
    damaged = replayed = False
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        frame_type = fdp.PickValueInList(sorted(framing.FRAME_TYPE_NAMES) + [0, 255])
        serializer_id = fdp.ConsumeIntInRange(0, 255)
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        encoded = encode_frame(frame_type, payload, serializer_id, sender)  # type: ignore[arg-type]
        damage = fdp.ConsumeIntInRange(0, 9)
        if damage == 1 and encoded:
            at = fdp.ConsumeIntInRange(0, len(encoded) - 1)
            flipped = encoded[at] ^ (fdp.ConsumeIntInRange(1, 255))
            encoded = encoded[:at] + bytes([flipped]) + encoded[at + 1 :]
            damaged = True
        elif damage == 2:
            encoded = encoded[: fdp.ConsumeIntInRange(0, len(encoded))]
            damaged = True
        elif damage == 3:
            encoded = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16)) + encoded
            damaged = True
        elif damage == 4 and stream:
            # Replay everything sent so far (signed frames must be refused).
            encoded = stream + encoded
            damaged = replayed = True
        stream += encoded
        sent.append(Frame(frame_type, serializer_id, sender.flag, payload))  # type: ignore[attr-defined]
        if damaged:
            break
    try:
        frames = _feed(decoder, stream, fdp)
    except FrameError:
        assert (
            damaged
            or len(stream) - 4 > max_frame_bytes
            or any(
                len(f.payload) + framing.HEADER_SIZE + receiver.trailer_size > max_frame_bytes  # type: ignore[attr-defined]
                for f in sent
            )
        ), "an undamaged stream of frames within max_frame_bytes was refused"
        return
    assert not (replayed and kind == 1), "a replayed signed frame was accepted"
    if not damaged:
        assert frames == sent, f"decoded {frames!r}, sent {sent!r}"
        assert decoder.buffered == 0, "bytes left over after whole frames"


def main() -> None:
    """
    Run the fuzzer (libFuzzer options on the command line).
    """
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
