"""
The wire over real loopback sockets: a live L{Mesh} on the C{tcp} transport
facing a raw TCP client that sends garbage, and a good peer afterwards.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from clustron.config import NodeConfig
from clustron.errors import FrameError
from clustron.observability.metrics import NodeMetrics
from clustron.serializers.json import json_serializer
from clustron.transport.tcp import tcp_transport
from clustron.wire import framing
from clustron.wire.framing import Crc32, FrameDecoder
from clustron.wire.mesh import Mesh

MAX_FRAME_BYTES = 4096


def live_config(node_id: str) -> NodeConfig:
    """
    A validated configuration listening on an ephemeral loopback port.

    The advertised port is a placeholder: the real one is known only once
    the mesh listens (see L{LiveNode.start}).
    """
    return NodeConfig.from_dict(
        {
            "cluster_id": "live",
            "node_id": node_id,
            "transport": "tcp",
            "listen": "tcp:0:interface=127.0.0.1",
            "advertise": "127.0.0.1:9",
            "wire": {"max_frame_bytes": MAX_FRAME_BYTES, "handshake_timeout": 5.0},
            "messaging": {"fragment_bytes": 1024},
        },
        discovery_validators={"static": lambda options: []},
        plugin_names=lambda kind: {
            "transport": ["tcp"],
            "serializer": ["json"],
            "election": ["bully"],
        }[kind],
    )


class LiveNode:
    """
    A mesh on the real reactor with its callbacks recorded.
    """

    def __init__(self, node_id: str, seed: int) -> None:
        self.metrics = NodeMetrics()
        self.mesh = Mesh(
            reactor,
            live_config(node_id),
            tcp_transport,
            json_serializer,
            [json_serializer],
            self.metrics,
            random.Random(seed),
            incarnation=1,
        )
        self.ups: list[str] = []
        self.downs: list[str] = []
        self.frames: list[tuple[str, int, Any]] = []
        self.mesh.on_peer_up = lambda hello: self.ups.append(hello.node_id)
        self.mesh.on_peer_down = lambda hello, reason: self.downs.append(hello.node_id)
        self.mesh.on_frame = lambda node, kind, body: self.frames.append((node, kind, body))
        self.port = 0

    @inlineCallbacks
    def start(self) -> Any:
        """
        Listen, then advertise the port actually bound.
        """
        yield self.mesh.start()
        assert self.mesh.listening_port is not None
        self.port = self.mesh.listening_port.getHost().port
        self.mesh.local_hello = attrs.evolve(
            self.mesh.local_hello, address=f"127.0.0.1:{self.port}"
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def idle(self) -> bool:
        """
        Whether every connection of this mesh is fully closed.
        """
        return not self.mesh._protocols


class RawClient(Protocol):
    """
    A raw TCP client: writes C{data} once connected, records what comes
    back, and fires C{lost} when the connection ends.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802
        self.reason = reason
        self.lost.callback(None)


@inlineCallbacks
def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> Any:
    """
    Poll C{predicate} on the reactor until it is true.

    @raise AssertionError: when C{timeout} seconds pass first.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        yield deferLater(reactor, 0.01, lambda: None)


def expected_reason(data: bytes) -> str:
    """
    The reason the decoder gives for C{data} (so random bytes can be checked
    against the right counter).
    """
    try:
        FrameDecoder(MAX_FRAME_BYTES, Crc32()).feed(data)
    except FrameError as e:
        return e.reason
    raise AssertionError("these bytes do not break the framing rules")


class LiveMeshTests(TestCase):
    """
    A live mesh cuts off a misbehaving client and stays usable.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.node = LiveNode("a", seed=1)
        self.others: list[LiveNode] = []
        yield self.node.start()

    @inlineCallbacks
    def tearDown(self) -> Any:
        for node in [*self.others, self.node]:
            yield node.mesh.stop()
        for node in [*self.others, self.node]:
            yield wait_for(node.idle)

    @inlineCallbacks
    def raw(self, data: bytes) -> Any:
        """
        Send C{data} from a raw client and wait until the mesh hangs up.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port, timeout=5)
        client = yield connectProtocol(endpoint, RawClient(data))
        yield client.lost
        yield wait_for(self.node.idle)
        return client

    @inlineCallbacks
    def assert_cut_off(self, data: bytes, reason: str) -> Any:
        """
        The mesh hangs up on a client sending C{data} (after sending its
        HELLO), counts C{reason}, and still accepts a good peer.
        """
        client = yield self.raw(data)
        frames = FrameDecoder(1 << 20, Crc32()).feed(client.received)
        self.assertEqual([f.frame_type for f in frames], [framing.HELLO])
        self.assertEqual(self.node.sample("clustron_frame_errors_total", reason=reason), 1)
        self.assertEqual(self.node.mesh.peers, {})
        yield self.assert_good_peer_accepted()

    @inlineCallbacks
    def assert_cut_off_dribbled(self, data: bytes, reason: str) -> Any:
        """
        Like L{assert_cut_off}, writing one byte per reactor turn.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.node.port, timeout=5)
        client = yield connectProtocol(endpoint, RawClient(b""))
        for index in range(len(data)):
            client.transport.write(data[index : index + 1])
            yield deferLater(reactor, 0.01, lambda: None)
        yield client.lost
        yield wait_for(self.node.idle)
        self.assertEqual(self.node.sample("clustron_frame_errors_total", reason=reason), 1)
        yield self.assert_good_peer_accepted()

    @inlineCallbacks
    def assert_good_peer_accepted(self) -> Any:
        good = LiveNode("b", seed=2)
        self.others.append(good)
        yield good.start()
        good.mesh.set_addresses("test", {("127.0.0.1", self.node.port)})
        yield wait_for(lambda: self.node.ups and good.ups)
        self.assertEqual(self.node.ups, ["b"])
        self.assertEqual(good.ups, ["a"])
        self.assertEqual(self.node.mesh.address_of("b"), ("127.0.0.1", good.port))
        good.mesh.send("a", framing.MESSAGE, {"hello": "live"})
        yield wait_for(lambda: self.node.frames)
        self.assertEqual(self.node.frames, [("b", framing.MESSAGE, {"hello": "live"})])

    def test_random_garbage(self) -> Any:
        """
        Random bytes (from a fixed seed).
        """
        data = random.Random(20240601).randbytes(512)
        return self.assert_cut_off(data, expected_reason(data))

    def test_oversized_length(self) -> Any:
        """
        A length prefix far above C{max_frame_bytes}, with nothing after it.
        """
        return self.assert_cut_off(struct.pack(">I", 0x7FFFFFFF), "oversized")

    def test_bad_checksum(self) -> Any:
        """
        A well-formed HELLO whose checksum was damaged in transit.
        """
        hello = attrs.evolve(self.node.mesh.local_hello, node_id="x", nonce="raw")
        data = bytearray(
            framing.encode_frame(
                framing.HELLO, json_serializer.dumps(hello.to_dict()), 1, Crc32()
            )
        )
        data[-1] ^= 0x40
        return self.assert_cut_off(bytes(data), "bad_checksum")

    def test_tls_client_hello(self) -> Any:
        """
        A TLS ClientHello sent to a plain TCP node (a common misconfiguration):
        its first bytes read as a huge length.
        """
        data = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32
        self.assertEqual(expected_reason(data), "oversized")
        return self.assert_cut_off(data, "oversized")

    def test_bad_magic(self) -> Any:
        """
        A plausible length followed by something that is not a frame.
        """
        data = struct.pack(">I", 18) + b"GET / HTTP/1.1\r\n\r\n"
        return self.assert_cut_off(data, "bad_magic")

    def test_byte_by_byte_then_garbage(self) -> Any:
        """
        Garbage dribbled in one byte per write is refused all the same.
        """
        return self.assert_cut_off_dribbled(struct.pack(">I", MAX_FRAME_BYTES + 1), "oversized")

    @inlineCallbacks
    def test_self_dial(self) -> Any:
        """
        Dialled at its real port (which its configuration does not name), the
        mesh recognises itself and stops dialling that address.
        """
        self.node.mesh.set_addresses("test", {("127.0.0.1", self.node.port)})
        yield wait_for(lambda: not self.node.mesh.wanted_addresses())
        yield wait_for(self.node.idle)
        self.assertEqual(self.node.ups, [])
        self.assertEqual(
            self.node.sample("clustron_connection_attempts_total", result="connected"), 1
        )
        yield self.assert_good_peer_accepted()

    @inlineCallbacks
    def test_write_through_keeps_order(self) -> Any:
        """
        On a TCP connection the first frame written after data came in goes
        straight to the socket (nothing is left in the transport's buffer);
        the frames after it in the same turn go through the transport's
        buffer, and the peer gets them all, in order.
        """
        good = LiveNode("b", seed=2)
        self.others.append(good)
        yield good.start()
        good.mesh.set_addresses("test", {("127.0.0.1", self.node.port)})
        yield wait_for(lambda: self.node.ups and good.ups)
        good.mesh.send("a", framing.MESSAGE, {"n": -1})
        yield wait_for(lambda: self.node.frames)
        protocol = self.node.mesh.peers["b"]
        transport = protocol.transport
        self.assertFalse(protocol._wrote_through)
        self.node.mesh.send("b", framing.MESSAGE, {"n": 0})
        self.assertTrue(protocol._wrote_through)
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))
        for n in range(1, 200):
            self.node.mesh.send("b", framing.MESSAGE, {"n": n, "pad": "x" * 3000})
        self.assertGreater(transport._tempDataLen, 0)
        yield wait_for(lambda: len(good.frames) == 200)
        self.assertEqual([body["n"] for _, _, body in good.frames], list(range(200)))
