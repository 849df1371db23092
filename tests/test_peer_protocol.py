"""
Tests for L{clustron.wire.protocol.PeerProtocol}, driven through a
L{StringTransport}, a L{Clock} and a fake owner.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from clustron.errors import ProtocolViolation, QueueFull, SerializationError
from clustron.interfaces import ISerializer
from clustron.observability.metrics import NodeMetrics
from clustron.serializers.json import json_serializer
from clustron.wire import framing
from clustron.wire.framing import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Crc32,
    Frame,
    FrameDecoder,
    IIntegrity,
    encode_frame,
)
from clustron.wire.handshake import Hello, Reject
from clustron.wire.protocol import DUPLICATE_CONNECTION, PeerProtocol

HANDSHAKE_TIMEOUT = 5.0


def make_hello(node_id: str, **changes: Any) -> Hello:
    """
    A valid HELLO for C{node_id}.
    """
    base = Hello(
        cluster_id="test",
        node_id=node_id,
        incarnation=1,
        protocol=(PROTOCOL_MAJOR, PROTOCOL_MINOR),
        app_version="",
        address="192.0.2.9:7101",
        serializer="json",
        nonce=f"nonce-{node_id}",
    )
    return attrs.evolve(base, **changes)


class FakeOwner:
    """
    A L{clustron.wire.protocol.PeerProtocolOwner} that records what it is
    told and answers as configured.

    @ivar refusal: what L{hello_received} answers.
    @ivar keep: what L{handshake_complete} answers.
    @ivar frame_error: raised by L{frame_received} when set.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_frame_bytes: int = 4096,
        queue_frames: int = 4,
        queue_bytes: int = 100_000,
    ) -> None:
        self.local_hello = make_hello("local")
        self.metrics = NodeMetrics()
        self.clock = clock
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.max_frame_bytes = max_frame_bytes
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.refusal: tuple[str, str] | None = None
        self.keep = True
        self.frame_error: Exception | None = None
        self.hellos: list[Hello] = []
        self.completed: list[PeerProtocol] = []
        self.frames: list[tuple[int, Any]] = []
        self.closed: list[str] = []
        self.rejects: list[Reject] = []
        self.writable: list[PeerProtocol] = []

    def integrity_for(self, ours: Hello, theirs: Hello | None) -> IIntegrity:
        return Crc32()

    def serializer_by_id(self, wire_id: int) -> ISerializer | None:
        return json_serializer if wire_id == json_serializer.wire_id else None

    def hello_received(self, protocol: PeerProtocol, hello: Hello) -> tuple[str, str] | None:
        self.hellos.append(hello)
        return self.refusal

    def handshake_complete(self, protocol: PeerProtocol) -> bool:
        self.completed.append(protocol)
        return self.keep

    def frame_received(self, protocol: PeerProtocol, frame_type: int, body: Any) -> None:
        if self.frame_error is not None:
            raise self.frame_error
        self.frames.append((frame_type, body))

    def connection_closed(self, protocol: PeerProtocol, reason: str) -> None:
        self.closed.append(reason)

    def rejected_by_peer(self, protocol: PeerProtocol, reject: Reject) -> None:
        self.rejects.append(reject)

    def connection_writable(self, protocol: PeerProtocol) -> None:
        self.writable.append(protocol)

    def sample(self, name: str, **labels: str) -> float:
        """
        The current value of one metric sample (0 when never set).
        """
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def frame(frame_type: int, body: Any, serializer_id: int = 1) -> bytes:
    """
    The bytes of one CRC32 frame carrying C{body} as JSON.
    """
    return encode_frame(frame_type, json_serializer.dumps(body), serializer_id, Crc32())


def hello_frame(hello: Hello) -> bytes:
    return frame(framing.HELLO, hello.to_dict())


class ProtocolTestCase(SynchronousTestCase):
    """
    Sets up one protocol on a string transport.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.owner = FakeOwner(self.clock)
        self.connect()

    def connect(self, owner: FakeOwner | None = None) -> None:
        if owner is not None:
            self.owner = owner
        self.protocol = PeerProtocol(self.owner, json_serializer, initiated=False)
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.9", 50000)
        )
        self.protocol.makeConnection(self.transport)
        self.sent_decoder = FrameDecoder(1 << 20, Crc32())

    def sent(self) -> list[Frame]:
        """
        The frames written since the last call.
        """
        frames = self.sent_decoder.feed(self.transport.value())
        self.transport.clear()
        return frames

    def establish(self) -> None:
        """
        Complete the handshake with a peer called C{peer}.
        """
        self.protocol.dataReceived(hello_frame(make_hello("peer")))
        self.assertTrue(self.protocol.established)
        self.sent()

    def lose(self, reason: Failure | None = None) -> None:
        """
        Deliver C{connectionLost}, as the reactor would after a close.
        """
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))

    def assertAborted(self) -> None:
        self.assertTrue(self.transport.disconnected, "connection was not aborted")
        self.assertTrue(self.protocol.closed)

    def assertClosedGracefully(self) -> None:
        self.assertTrue(self.transport.disconnecting, "loseConnection was not called")
        self.assertFalse(self.transport.disconnected, "connection was aborted")
        self.assertIsNone(self.transport.producer, "producer still registered")
        self.assertTrue(self.protocol.closed)


class ConnectionMadeTests(ProtocolTestCase):
    """
    What happens as soon as the connection is up.
    """

    def test_push_producer(self) -> None:
        """
        L{PeerProtocol} is an L{IPushProducer}, registered as a streaming
        producer on its transport.
        """
        self.assertTrue(verifyObject(IPushProducer, self.protocol))
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)

    def test_hello_sent(self) -> None:
        """
        Our HELLO, as JSON, is the first thing sent.
        """
        frames = self.sent()
        self.assertEqual(len(frames), 1)
        self.assertEqual(frames[0].frame_type, framing.HELLO)
        self.assertEqual(frames[0].serializer_id, json_serializer.wire_id)
        self.assertEqual(
            Hello.from_dict(json_serializer.loads(frames[0].payload)), self.owner.local_hello
        )
        self.assertEqual(self.owner.sample("clustron_frames_sent_total", type="hello"), 1)

    def test_handshake_timer(self) -> None:
        """
        A handshake timer is running.
        """
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), HANDSHAKE_TIMEOUT)


class HandshakeTests(ProtocolTestCase):
    """
    The handshake as seen by one protocol.
    """

    def test_hello_accepted(self) -> None:
        """
        An accepted HELLO completes the handshake: the owner hears of it, the
        timer stops, and later frames reach the owner decoded.
        """
        peer = make_hello("peer")
        self.protocol.dataReceived(hello_frame(peer))
        self.assertEqual(self.owner.hellos, [peer])
        self.assertEqual(self.owner.completed, [self.protocol])
        self.assertEqual(self.protocol.peer, peer)
        self.assertTrue(self.protocol.established)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.protocol.dataReceived(frame(framing.CONTROL, {"op": "x"}))
        self.assertEqual(self.owner.frames, [(framing.CONTROL, {"op": "x"})])
        self.assertEqual(self.owner.sample("clustron_frames_received_total", type="control"), 1)

    def test_hello_byte_by_byte(self) -> None:
        """
        A HELLO and a frame arriving one byte at a time work the same.
        """
        data = hello_frame(make_hello("peer")) + frame(framing.HEARTBEAT, [1, 2])
        for index in range(len(data)):
            self.protocol.dataReceived(data[index : index + 1])
        self.assertTrue(self.protocol.established)
        self.assertEqual(self.owner.frames, [(framing.HEARTBEAT, [1, 2])])
        self.assertEqual(self.owner.sample("clustron_bytes_received_total"), len(data))

    def test_frames_before_hello(self) -> None:
        """
        Any frame but HELLO or REJECT before the peer's HELLO aborts the
        connection and is counted; the owner never sees it.
        """
        for frame_type in (framing.MESSAGE, framing.CONTROL, framing.HEARTBEAT, framing.BYE, 99):
            self.connect(FakeOwner(self.clock))
            self.protocol.dataReceived(frame(frame_type, {}) + hello_frame(make_hello("peer")))
            self.assertAborted()
            self.assertEqual(self.owner.frames, [])
            self.assertEqual(self.owner.hellos, [])
            self.assertEqual(
                self.owner.sample(
                    "clustron_protocol_violations_total", reason="before_handshake"
                ),
                1,
            )
            self.lose(Failure(ConnectionAborted()))
            self.assertEqual(len(self.owner.closed), 1)
            self.assertIn("before_handshake", self.owner.closed[0])

    def test_malformed_hello(self) -> None:
        """
        A HELLO that is not JSON, or lacks fields, is a protocol violation.
        """
        for payload in (b"not json", b"{}", b'{"cluster_id": "test"}', b"[]"):
            self.connect(FakeOwner(self.clock))
            self.protocol.dataReceived(encode_frame(framing.HELLO, payload, 1, Crc32()))
            self.assertAborted()
            self.assertIsNone(self.protocol.peer)
            self.assertEqual(
                self.owner.sample("clustron_protocol_violations_total", reason="malformed_hello"),
                1,
            )

    def test_second_hello(self) -> None:
        """
        A second HELLO on one connection is a protocol violation.
        """
        self.establish()
        self.protocol.dataReceived(hello_frame(make_hello("peer")))
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="duplicate_hello"), 1
        )

    def test_refused(self) -> None:
        """
        When the owner refuses the HELLO, a REJECT with the reason is sent and
        the connection is closed (not aborted, so the REJECT gets out).
        """
        self.sent()
        self.owner.refusal = ("cluster_id_mismatch", "peer is in cluster 'x'")
        self.protocol.dataReceived(hello_frame(make_hello("peer", cluster_id="x")))
        frames = self.sent()
        self.assertEqual([f.frame_type for f in frames], [framing.REJECT])
        self.assertEqual(
            Reject.from_dict(json_serializer.loads(frames[0].payload)),
            Reject("cluster_id_mismatch", "peer is in cluster 'x'"),
        )
        self.assertClosedGracefully()
        self.assertFalse(self.protocol.established)
        self.assertEqual(self.owner.completed, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.lose()
        self.assertEqual(
            self.owner.closed, ["refused peer: cluster_id_mismatch: peer is in cluster 'x'"]
        )

    def test_rejected_by_peer(self) -> None:
        """
        A REJECT from the peer goes to the owner; the connection is closed
        and frames after it are ignored.
        """
        reject = Reject("cluster_id_mismatch", "peer is in cluster 'other'")
        self.protocol.dataReceived(
            frame(framing.REJECT, reject.to_dict()) + hello_frame(make_hello("peer"))
        )
        self.assertEqual(self.owner.rejects, [reject])
        self.assertEqual(self.protocol.rejection, reject)
        self.assertEqual(self.owner.hellos, [])
        self.assertClosedGracefully()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.lose()
        self.assertEqual(
            self.owner.closed,
            ["rejected by peer: cluster_id_mismatch: peer is in cluster 'other'"],
        )

    def test_malformed_reject(self) -> None:
        """
        A REJECT that is not JSON still closes the connection, with reason
        C{unknown}.
        """
        self.protocol.dataReceived(encode_frame(framing.REJECT, b"\xff\xfe", 1, Crc32()))
        self.assertEqual([r.reason for r in self.owner.rejects], ["unknown"])
        self.assertClosedGracefully()

    def test_duplicate_connection(self) -> None:
        """
        When the owner keeps another connection to the same peer, this one is
        closed with a BYE saying so: the peer may have taken it as its own
        until the other one reaches it.
        """
        self.sent()
        self.owner.keep = False
        self.protocol.dataReceived(hello_frame(make_hello("peer")))
        self.assertFalse(self.protocol.established)
        frames = self.sent()
        self.assertEqual([f.frame_type for f in frames], [framing.BYE])
        self.assertEqual(
            json_serializer.loads(frames[0].payload), {"reason": DUPLICATE_CONNECTION}
        )
        self.assertClosedGracefully()
        self.assertEqual(self.protocol.close_reason, DUPLICATE_CONNECTION)

    def test_handshake_timeout(self) -> None:
        """
        Without a HELLO within the handshake timeout the connection is
        aborted and counted.
        """
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.01)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.01)
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="handshake_timeout"), 1
        )
        self.lose(Failure(ConnectionAborted()))
        self.assertEqual(self.owner.closed, [f"no handshake within {HANDSHAKE_TIMEOUT} s"])

    def test_partial_hello_times_out(self) -> None:
        """
        A HELLO that never finishes arriving does not stop the timer.
        """
        self.protocol.dataReceived(hello_frame(make_hello("peer"))[:-1])
        self.clock.advance(HANDSHAKE_TIMEOUT)
        self.assertAborted()

    def test_no_timeout_after_handshake(self) -> None:
        """
        After the handshake the timer is gone.
        """
        self.establish()
        self.clock.advance(HANDSHAKE_TIMEOUT * 10)
        self.assertFalse(self.transport.disconnecting)


class BadInputTests(ProtocolTestCase):
    """
    Bytes that break the framing rules abort the connection.
    """

    def assertFrameError(self, data: bytes, reason: str) -> None:
        self.protocol.dataReceived(data)
        self.assertAborted()
        self.assertEqual(self.owner.sample("clustron_frame_errors_total", reason=reason), 1)
        # Whatever follows is ignored.
        self.protocol.dataReceived(frame(framing.MESSAGE, "later"))
        self.assertEqual(self.owner.frames, [])
        self.lose(Failure(ConnectionAborted()))
        self.assertEqual(len(self.owner.closed), 1)
        self.assertTrue(self.owner.closed[0].startswith(f"frame error: {reason}"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_before_handshake(self) -> None:
        """
        Text where a frame should be (an HTTP request, say).
        """
        self.assertFrameError(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "oversized")

    def test_garbage_magic(self) -> None:
        """
        A plausible length followed by the wrong magic.
        """
        self.assertFrameError(struct.pack(">I", 20) + b"HTTP" + b"\x00" * 16, "bad_magic")

    def test_oversized(self) -> None:
        """
        A length above C{max_frame_bytes}, even without a body.
        """
        self.assertFrameError(struct.pack(">I", self.owner.max_frame_bytes + 1), "oversized")

    def test_bad_checksum_after_handshake(self) -> None:
        """
        A corrupted frame on an established connection.
        """
        self.establish()
        data = bytearray(frame(framing.MESSAGE, {"k": "v"}))
        data[-6] ^= 0x01
        self.assertFrameError(bytes(data), "bad_checksum")

    def test_unknown_serializer(self) -> None:
        """
        A frame in a serializer that is not installed is a protocol
        violation.
        """
        self.establish()
        self.protocol.dataReceived(frame(framing.MESSAGE, {}, serializer_id=77))
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="unknown_serializer"),
            1,
        )

    def test_undecodable(self) -> None:
        """
        A payload the serializer cannot decode is a protocol violation.
        """
        self.establish()
        self.protocol.dataReceived(encode_frame(framing.MESSAGE, b"{not json", 1, Crc32()))
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="undecodable"), 1
        )


class GoodFramesBeforeErrorTests(ProtocolTestCase):
    """
    Frames decoded in the same chunk as bad bytes.
    """

    def test_none_delivered(self) -> None:
        """
        The decoder refuses a whole chunk: a good frame followed by bad bytes
        in one chunk is not delivered (the peer is not trusted any more).
        """
        self.establish()
        self.protocol.dataReceived(frame(framing.MESSAGE, 1) + b"\x00\x00\x00\x01")
        self.assertAborted()
        self.assertEqual(self.owner.frames, [])


class OwnerErrorTests(ProtocolTestCase):
    """
    Exceptions raised by the owner while handling a frame.
    """

    def test_protocol_violation(self) -> None:
        """
        A L{ProtocolViolation} from the owner (a frame type the node does not
        handle, say) aborts the connection and is counted by its reason.
        """
        self.establish()
        self.owner.frame_error = ProtocolViolation("unknown_frame_type", "frame type 42")
        self.protocol.dataReceived(frame(42, {}))
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="unknown_frame_type"),
            1,
        )

    def test_bug_in_owner(self) -> None:
        """
        Any other exception (a bug) does not escape C{dataReceived}: it is
        logged with its traceback, counted as C{internal_error}, and the
        connection is aborted; later frames are ignored.
        """
        self.establish()
        self.owner.frame_error = ZeroDivisionError("oops")
        self.protocol.dataReceived(frame(framing.MESSAGE, 1) + frame(framing.MESSAGE, 2))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertAborted()
        self.assertEqual(
            self.owner.sample("clustron_protocol_violations_total", reason="internal_error"), 1
        )
        self.owner.frame_error = None
        self.protocol.dataReceived(frame(framing.MESSAGE, 3))
        self.assertEqual(self.owner.frames, [])
        self.lose(Failure(ConnectionAborted()))
        self.assertEqual(self.owner.closed, ["internal error"])

    def test_bug_in_handshake(self) -> None:
        """
        The same holds for an exception while judging a HELLO.
        """

        def broken(protocol: PeerProtocol, hello: Hello) -> None:
            raise KeyError("bug")

        self.owner.hello_received = broken  # type: ignore[method-assign]
        self.protocol.dataReceived(hello_frame(make_hello("peer")))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertAborted()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CloseTests(ProtocolTestCase):
    """
    Closing, by either side.
    """

    def test_close_established(self) -> None:
        """
        L{PeerProtocol.close} says BYE with the reason, unregisters the
        producer and closes; sending afterwards fails; closing twice is
        harmless.
        """
        self.establish()
        self.protocol.close("node stopping")
        frames = self.sent()
        self.assertEqual([f.frame_type for f in frames], [framing.BYE])
        self.assertEqual(json_serializer.loads(frames[0].payload), {"reason": "node stopping"})
        self.assertClosedGracefully()
        self.assertRaises(QueueFull, self.protocol.send, framing.MESSAGE, 1)
        self.protocol.close("again")
        self.assertEqual(self.sent(), [])
        self.lose()
        self.assertEqual(self.owner.closed, ["node stopping"])

    def test_close_before_handshake(self) -> None:
        """
        Before the handshake there is no BYE, and the timer stops.
        """
        self.sent()
        self.protocol.close("node stopping")
        self.assertEqual(self.sent(), [])
        self.assertClosedGracefully()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bye_received(self) -> None:
        """
        A BYE from the peer closes the connection with its reason.
        """
        self.establish()
        self.protocol.dataReceived(frame(framing.BYE, {"reason": "leaving"}))
        self.assertClosedGracefully()
        self.assertEqual(self.protocol.bye_reason, "leaving")
        self.assertIsNone(self.protocol.rejection)
        self.lose()
        self.assertEqual(self.owner.closed, ["peer said bye: leaving"])

    def test_bye_without_reason(self) -> None:
        """
        A BYE without a usable reason still closes.
        """
        self.establish()
        self.protocol.dataReceived(frame(framing.BYE, ["odd"]))
        self.assertClosedGracefully()
        self.assertEqual(self.protocol.close_reason, "peer said bye: ?")

    def test_connection_lost(self) -> None:
        """
        A connection lost unasked reports the transport's reason and stops
        the timer.
        """
        self.lose(Failure(ConnectionAborted("reset by peer")))
        self.assertTrue(self.protocol.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.owner.closed), 1)
        self.assertIn("reset by peer", self.owner.closed[0])
        self.protocol.dataReceived(hello_frame(make_hello("peer")))
        self.assertEqual(self.owner.hellos, [])


class SendTests(ProtocolTestCase):
    """
    Sending, and back-pressure.
    """

    def setUp(self) -> None:
        super().setUp()
        self.establish()

    def payloads(self) -> list[Any]:
        return [json_serializer.loads(f.payload) for f in self.sent()]

    def test_send(self) -> None:
        """
        A frame is written at once, in the connection's serializer, and
        counted.
        """
        self.protocol.send(framing.MESSAGE, {"n": 1})
        frames = self.sent()
        self.assertEqual(frames, [Frame(framing.MESSAGE, 1, framing.FLAG_CRC32, b'{"n":1}')])
        self.assertEqual(self.owner.sample("clustron_frames_sent_total", type="message"), 1)

    def test_unserializable(self) -> None:
        """
        A body the serializer refuses raises L{SerializationError}; nothing
        is written.
        """
        self.assertRaises(SerializationError, self.protocol.send, framing.MESSAGE, b"bytes")
        self.assertRaises(SerializationError, self.protocol.send, framing.MESSAGE, float("nan"))
        self.assertEqual(self.sent(), [])

    def test_too_large(self) -> None:
        """
        A frame larger than C{max_frame_bytes} is refused before it is
        written (the peer would drop the connection over it).
        """
        with self.assertRaises(SerializationError) as caught:
            self.protocol.send(framing.MESSAGE, "x" * self.owner.max_frame_bytes)
        self.assertIn("max_frame_bytes", str(caught.exception))
        self.assertEqual(self.sent(), [])

    def test_queue_while_paused(self) -> None:
        """
        While the transport pushes back, frames wait, up to
        C{send_queue_frames}; then L{QueueFull}. On resume they are written
        in order, priority frames first.
        """
        self.protocol.pauseProducing()
        self.protocol.send(framing.MESSAGE, 1)
        self.protocol.send(framing.MESSAGE, 2)
        self.protocol.send(framing.HEARTBEAT, "hb", priority=True)
        self.protocol.send(framing.MESSAGE, 3)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.protocol.queued_frames, 4)
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 4)
        with self.assertRaises(QueueFull) as caught:
            self.protocol.send(framing.MESSAGE, 4)
        self.assertIn("peer", str(caught.exception))
        self.assertRaises(QueueFull, self.protocol.send, framing.HEARTBEAT, "hb2", priority=True)
        self.assertEqual(self.owner.sample("clustron_send_queue_full_total"), 2)
        self.protocol.resumeProducing()
        self.assertEqual(self.payloads(), ["hb", 1, 2, 3])
        self.assertEqual(self.owner.writable, [self.protocol])
        self.assertTrue(self.protocol.writable)
        self.assertEqual(self.protocol.queued_frames, 0)
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 0)
        self.protocol.send(framing.MESSAGE, 5)
        self.assertEqual(self.payloads(), [5])

    def test_queue_bytes_limit(self) -> None:
        """
        The queue is bounded in bytes too.
        """
        self.connect(FakeOwner(self.clock, queue_frames=100, queue_bytes=100))
        self.establish()
        self.protocol.pauseProducing()
        self.protocol.send(framing.MESSAGE, "a" * 40)
        self.assertRaises(QueueFull, self.protocol.send, framing.MESSAGE, "b" * 60)
        self.protocol.send(framing.MESSAGE, "c")
        self.protocol.resumeProducing()
        self.assertEqual(self.payloads(), ["a" * 40, "c"])

    def test_pause_again_during_flush(self) -> None:
        """
        When the transport pushes back in the middle of a flush, the rest
        stays queued, in order.
        """
        self.protocol.pauseProducing()
        for n in range(3):
            self.protocol.send(framing.MESSAGE, n)
        original = self.transport.write

        def write(data: bytes) -> None:
            original(data)
            self.protocol.pauseProducing()

        self.transport.write = write  # type: ignore[method-assign]
        self.protocol.resumeProducing()
        self.assertEqual(self.payloads(), [0])
        self.assertEqual(self.protocol.queued_frames, 2)
        self.assertEqual(self.owner.writable, [])
        self.assertFalse(self.protocol.writable)
        self.transport.write = original  # type: ignore[method-assign]
        self.protocol.resumeProducing()
        self.assertEqual(self.payloads(), [1, 2])

    def test_queue_discarded_on_loss(self) -> None:
        """
        Frames still queued when the connection is lost are dropped, and the
        queue gauge goes back down.
        """
        self.protocol.pauseProducing()
        self.protocol.send(framing.MESSAGE, 1)
        self.protocol.send(framing.MESSAGE, 2)
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 2)
        self.lose(Failure(ConnectionAborted()))
        self.assertEqual(self.protocol.queued_frames, 0)
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 0)

    def test_queue_discarded_on_frame_error(self) -> None:
        """
        The same when the connection is dropped for bad input.
        """
        self.protocol.pauseProducing()
        self.protocol.send(framing.MESSAGE, 1)
        self.protocol.dataReceived(b"\xff" * 8)
        self.assertAborted()
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 0)

    def test_close_while_paused(self) -> None:
        """
        Closing while frames wait writes them, then the BYE, before the
        connection closes: what L{send} accepted is not silently dropped.
        """
        self.protocol.pauseProducing()
        self.protocol.send(framing.MESSAGE, 1)
        self.protocol.send(framing.MESSAGE, 2)
        self.protocol.close("node stopping")
        frames = self.sent()
        self.assertEqual(
            [f.frame_type for f in frames], [framing.MESSAGE, framing.MESSAGE, framing.BYE]
        )
        self.assertClosedGracefully()
        self.assertEqual(self.owner.sample("clustron_send_queue_frames"), 0)

    def test_writable(self) -> None:
        """
        C{writable} says whether a frame would go straight out; the owner is
        told when an established connection drains.
        """
        self.assertTrue(self.protocol.writable)
        self.protocol.pauseProducing()
        self.assertFalse(self.protocol.writable)
        self.protocol.resumeProducing()
        self.assertTrue(self.protocol.writable)
        self.assertEqual(self.owner.writable, [self.protocol])
        self.protocol.close("done")
        self.assertFalse(self.protocol.writable)

    def test_not_writable_before_handshake(self) -> None:
        """
        A connection still in its handshake is not announced as drained.
        """
        self.connect(FakeOwner(self.clock))
        self.protocol.pauseProducing()
        self.protocol.resumeProducing()
        self.assertEqual(self.owner.writable, [])

    def test_stop_producing(self) -> None:
        """
        C{stopProducing} (the transport going away) holds further frames.
        """
        self.protocol.stopProducing()
        self.protocol.send(framing.MESSAGE, 1)
        self.assertEqual(self.sent(), [])
        self.assertEqual(self.protocol.queued_frames, 1)
